"""Offline ratings for a derived questionnaire: each derived trait borrows the recorded ratings
of its nearest HAL32Q trait.

Without an API, nobody can rate the Turing witnesses on freshly derived traits. What exists are
the judges' recorded ratings on HAL32Q. A derived trait whose text lies close to a HAL32Q trait
(cosine of their MiniLM embeddings at or above a threshold) is taken to measure the same thing
and receives that trait's ratings, under the *derived* id; the other derived traits are listed
as unmatched and left out of the reward. Two derived traits may share one HAL32Q trait: both
get its ratings (the table says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hal_core.embedding import EmbeddingCache, embed_texts
from hal_core.questionnaire import Questionnaire

DEFAULT_MATCH_THRESHOLD = 0.70
"""Cosine at or above which a derived trait takes a HAL32Q trait's ratings."""

WITNESS_COLUMNS = ("game_id", "witness", "is_human", "_row")
"""Columns of a witness table that are not trait ratings."""


class TraitMatchingError(ValueError):
    """No derived trait can be matched; the message says what to change."""


def embed_questionnaire(questionnaire: Questionnaire, cache: EmbeddingCache | None) -> np.ndarray:
    """Unit MiniLM vectors of the trait texts, one text per call (no padding, so a vector never
    depends on which other texts were encoded with it)."""
    return np.vstack([embed_texts([trait.text], cache) for trait in questionnaire.traits])


@dataclass(frozen=True)
class TraitMatching:
    """Each derived trait's nearest reference trait, the cosine, and whether it matched."""

    table: pd.DataFrame
    threshold: float

    @property
    def pairs(self) -> list[tuple[str, str, float]]:
        """``(derived id, reference id, cosine)`` of every matched derived trait."""
        matched = self.table[self.table["matched"]]
        return list(
            zip(matched["derived_id"], matched["reference_id"], matched["cosine"], strict=True)
        )

    @property
    def matched_ids(self) -> list[str]:
        return self.table.loc[self.table["matched"], "derived_id"].tolist()

    @property
    def unmatched_ids(self) -> list[str]:
        return self.table.loc[~self.table["matched"], "derived_id"].tolist()


def match_traits(
    derived: Questionnaire,
    reference: Questionnaire,
    derived_vectors: np.ndarray,
    reference_vectors: np.ndarray,
    threshold: float = DEFAULT_MATCH_THRESHOLD,
) -> TraitMatching:
    """Nearest reference trait of every derived trait by cosine; matched when >= threshold.

    Ties in cosine go to the reference trait with the smallest id, so the result does not
    depend on the reference questionnaire's order.
    """
    if derived_vectors.shape[0] != len(derived.traits):
        raise ValueError(f"{len(derived.traits)} derived traits, {len(derived_vectors)} vectors")
    if reference_vectors.shape[0] != len(reference.traits):
        raise ValueError(
            f"{len(reference.traits)} reference traits, {len(reference_vectors)} vectors"
        )
    order = np.argsort(reference.trait_ids, kind="stable")
    reference_ids = [reference.trait_ids[i] for i in order]
    similarity = _unit(derived_vectors) @ _unit(reference_vectors[order]).T
    best = np.argmax(similarity, axis=1)
    cosine = np.round(similarity[np.arange(len(best)), best], 4)
    texts = reference.texts()
    shared = pd.Series([reference_ids[j] for j in best]).where(cosine >= threshold - 1e-9)
    table = pd.DataFrame(
        {
            "derived_id": derived.trait_ids,
            "derived_text": [t.text for t in derived.traits],
            "reference_id": [reference_ids[j] for j in best],
            "reference_text": [texts[reference_ids[j]] for j in best],
            "cosine": cosine,
            "matched": cosine >= threshold - 1e-9,
        }
    )
    counts = shared.value_counts()
    table["shares_reference"] = shared.map(counts).fillna(0).astype(int).to_numpy() > 1
    return TraitMatching(table=table, threshold=threshold)


def matched_witnesses(reference_witnesses: pd.DataFrame, matching: TraitMatching) -> pd.DataFrame:
    """A witness table keyed by the matched *derived* trait ids, with reference ratings."""
    if not matching.matched_ids:
        best = matching.table.sort_values("cosine", ascending=False).head(3)
        closest = ", ".join(
            f"{d}~{r} {c:.2f}"
            for d, r, c in zip(best.derived_id, best.reference_id, best.cosine, strict=True)
        )
        raise TraitMatchingError(
            f"no derived trait reaches cosine {matching.threshold:.2f} with a reference trait "
            f"(closest: {closest}); lower the match threshold, or rate the derived "
            "questionnaire with a judge and fit on those ratings"
        )
    missing = sorted(set(matching.table["reference_id"]) - set(reference_witnesses.columns))
    if missing:
        raise KeyError(f"reference ratings lack traits {missing}")
    keep = [c for c in WITNESS_COLUMNS if c in reference_witnesses.columns]
    columns = {
        derived_id: reference_witnesses[reference_id].to_numpy()
        for derived_id, reference_id, _ in matching.pairs
    }
    frame = pd.concat(
        [reference_witnesses[keep].reset_index(drop=True), pd.DataFrame(columns)], axis=1
    )
    frame.attrs.update(reference_witnesses.attrs)
    return frame


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0.0, 1.0, norms)
