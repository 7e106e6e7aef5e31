"""experts.models without converting anything: paths, resolution, errors, atomicity, skip-if-done.

The conversion itself (transformers, ~1-2 min) is replaced by a fake that writes a file; the real
one runs in tests/integration/test_engine.py.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from experts import models
from experts.models import (
    BUILTIN_MODELS,
    BuiltinModel,
    ModelPrepareError,
    _Source,
    builtin_model_dir,
    prepare_builtin_models,
    read_model_meta,
    resolve_model,
)


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    """A built-in model whose source is a small local file and whose conversion writes one file."""
    source = tmp_path / "src.gguf"
    source.write_bytes(b"gguf v1")
    calls: list[Path] = []

    def convert(model: BuiltinModel, gguf: Path, out: Path) -> None:
        calls.append(gguf)
        out.mkdir()
        (out / "config.json").write_text(gguf.read_text())

    model = BuiltinModel(
        name="fake",
        description="test model",
        source=_Source(
            package="pytest",  # installed wherever the tests run
            pip="pip install fake",
            locate=lambda _work: source,
            sha256=lambda _work: models._sha256_file(source),
        ),
        default_stop=["\nUser:"],
    )
    monkeypatch.setitem(BUILTIN_MODELS, "fake", model)
    monkeypatch.setattr(models, "_convert", convert)
    return {"source": source, "calls": calls, "home": tmp_path / "home"}


def test_builtin_models_are_the_two_tiny_llms() -> None:
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "gemma-3-270m"}
    # The base model gets a chat template and stop strings; the instruct model keeps its own.
    assert BUILTIN_MODELS["gemma-3-270m"].chat_template
    assert BUILTIN_MODELS["gemma-3-270m"].default_stop
    assert BUILTIN_MODELS["smollm2-135m-instruct"].chat_template is None


def test_plain_chat_template_renders_a_transcript_ending_at_the_assistant_turn() -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(models.PLAIN_CHAT_TEMPLATE)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
    ]

    text = template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True)

    assert text == "<bos>Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: 2+2?\nAssistant:"
    # Without a system message, a preamble says what the transcript is.
    text = template.render(messages=messages[1:2], bos_token="<bos>", add_generation_prompt=True)
    assert text == f"<bos>{models.PLAIN_CHAT_PREAMBLE}\n\nUser: Hi\nAssistant:"


def test_model_dir_is_under_quorum_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUORUM_HOME", str(tmp_path))

    assert builtin_model_dir("gemma-3-270m") == tmp_path / "models" / "gemma-3-270m"
    assert builtin_model_dir("gemma-3-270m", home="/x") == Path("/x/models/gemma-3-270m")


def test_resolve_returns_non_builtin_specs_unchanged() -> None:
    assert resolve_model("/data/my-model") == "/data/my-model"
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_resolve_unprepared_builtin_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(ModelPrepareError, match="quorum models prepare"):
        resolve_model("builtin:gemma-3-270m", home=tmp_path)


def test_unknown_builtin_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelPrepareError, match="smollm2-135m-instruct, gemma-3-270m"):
        resolve_model("builtin:llama-70b", home=tmp_path)
    with pytest.raises(ModelPrepareError, match="llama-70b"):
        prepare_builtin_models(["llama-70b"], home=tmp_path)


def test_missing_package_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = BuiltinModel(
        name="absent",
        description="",
        source=_Source(
            package="no_such_package_xyz",
            pip='pip install --no-deps "no-such-package==1.0"',
            locate=lambda _w: tmp_path,
            sha256=lambda _w: "",
        ),
    )
    monkeypatch.setitem(BUILTIN_MODELS, "absent", model)

    with pytest.raises(ModelPrepareError) as info:
        prepare_builtin_models(["absent"], home=tmp_path)

    assert 'pip install --no-deps "no-such-package==1.0"' in str(info.value)
    assert not builtin_model_dir("absent", tmp_path).exists()
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_prepare_writes_folder_and_marker_then_resolves(fake_model: dict) -> None:
    home = fake_model["home"]

    paths = prepare_builtin_models(["fake"], home=home)

    folder = builtin_model_dir("fake", home)
    assert paths == {"fake": folder}
    assert (folder / "config.json").read_text() == "gguf v1"
    meta = read_model_meta(folder)
    assert meta["source_sha256"] == models._sha256_file(fake_model["source"])
    assert meta["default_stop"] == ["\nUser:"]
    assert resolve_model("builtin:fake", home=home) == str(folder)


def test_prepare_skips_done_models_and_redoes_on_force_or_new_source(
    fake_model: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, calls = fake_model["home"], fake_model["calls"]
    prepare_builtin_models(["fake"], home=home)

    prepare_builtin_models(["fake"], home=home)
    assert len(calls) == 1

    prepare_builtin_models(["fake"], home=home, force=True)
    assert len(calls) == 2

    fake_model["source"].write_bytes(b"gguf v2")
    prepare_builtin_models(["fake"], home=home)
    assert len(calls) == 3

    monkeypatch.setitem(
        BUILTIN_MODELS, "fake", replace(BUILTIN_MODELS["fake"], chat_template="{{ messages }}")
    )
    prepare_builtin_models(["fake"], home=home)
    assert len(calls) == 4
    assert (builtin_model_dir("fake", home) / "config.json").read_text() == "gguf v2"


def test_interrupted_conversion_leaves_no_folder_and_no_temp(
    fake_model: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fake_model["home"]

    def half_then_crash(model: BuiltinModel, gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_builtin_models(["fake"], home=home)

    models_dir = home / "models"
    assert not builtin_model_dir("fake", home).exists()
    assert [p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ModelPrepareError, match="not prepared"):
        resolve_model("builtin:fake", home=home)


def test_failed_rebuild_keeps_the_previous_folder(
    fake_model: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fake_model["home"]
    prepare_builtin_models(["fake"], home=home)

    def crash(model: BuiltinModel, gguf: Path, out: Path) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_builtin_models(["fake"], home=home, force=True)

    assert resolve_model("builtin:fake", home=home) == str(builtin_model_dir("fake", home))
    assert (builtin_model_dir("fake", home) / "config.json").read_text() == "gguf v1"
