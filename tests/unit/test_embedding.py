"""Embeddings that do not depend on the machine, the threads or the batch."""

from __future__ import annotations

import numpy as np

from hal_core.embedding import (
    EXACT_DECIMALS,
    EXACT_MODEL_KEY,
    EmbeddingCache,
    embed_exact,
    embed_texts,
    text_key,
)

TEXTS = [
    "Uses lowercase and skips punctuation.",
    "Admits not knowing something.",
    "Makes a typo and corrects it in the next message, then jokes about being tired.",
    "ok",
]


def test_exact_vectors_are_rounded_unit_rows_whatever_else_is_in_the_batch(tmp_path) -> None:
    together = embed_exact(TEXTS)
    assert together.dtype == np.float32 and together.shape == (4, 384)
    scaled = together.astype(np.float64) * 10**EXACT_DECIMALS
    assert np.allclose(scaled, np.round(scaled), atol=1e-3)  # on the 1e-6 grid
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)
    # a padded batch (the long text pads the short ones) changes no bit of any vector: exact on
    # purpose, as embed_exact promises (float64 encoder, rounded to 1e-6; a component lands on a
    # rounding boundary with probability ~1e-9, ~2e-6 for these 1,536)
    for index, text in enumerate(TEXTS):
        assert np.array_equal(embed_exact([text])[0], together[index])
    assert np.allclose(together, embed_texts(TEXTS), atol=1e-5)  # the same model

    cache = EmbeddingCache(tmp_path / "embeddings.sqlite", model_name=EXACT_MODEL_KEY)
    first = embed_exact(TEXTS[:2], cache)
    assert np.array_equal(first, together[:2])
    again = embed_exact([TEXTS[1], TEXTS[0], TEXTS[1]], cache)
    assert np.array_equal(again, together[[1, 0, 1]])
    assert embed_exact([], cache).shape == (0, 384)


def test_exact_and_float32_vectors_keep_apart_in_one_cache_file(tmp_path) -> None:
    path = tmp_path / "embeddings.sqlite"
    exact, plain = EmbeddingCache(path, model_name=EXACT_MODEL_KEY), EmbeddingCache(path)
    key = text_key(TEXTS[0])
    embed_exact(TEXTS[:1], exact)
    assert key in exact.get_many([key]) and plain.get_many([key]) == {}
    embed_texts(TEXTS[:1], plain)
    stored_exact, stored_plain = exact.get_many([key])[key], plain.get_many([key])[key]
    assert not np.array_equal(stored_exact, stored_plain)
    assert np.allclose(stored_plain, stored_exact, atol=2e-6)
