"""Offline ratings for a derived questionnaire: derived traits borrow HAL32Q ratings by cosine."""

import numpy as np
import pandas as pd
import pytest

from hal_core.embedding import EmbeddingCache
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.reward import RewardConfig, fit_reward
from hal_core.shape_reward import ShapeRewardRegression
from hal_core.tables import read_table, witness_ratings
from hal_core.trait_matching import (
    TraitMatchingError,
    embed_questionnaire,
    match_traits,
    matched_witnesses,
)


def _questionnaire(name: str, texts: dict[str, str]) -> Questionnaire:
    return Questionnaire(name=name, traits=tuple(Trait(id=i, text=t) for i, t in texts.items()))


REFERENCE = _questionnaire("ref", {"t01": "a", "t02": "b", "t03": "c"})


def test_match_by_cosine_with_threshold_ties_and_shared_references():
    derived = _questionnaire("derived", {"t01": "x", "t02": "y", "t03": "z", "t04": "w"})
    reference_vectors = np.eye(3)
    derived_vectors = np.array(
        [
            [0.0, 0.0, 1.0],  # t01 -> ref t03 (cosine 1)
            [0.8, 0.6, 0.0],  # t02 -> ref t01 (0.8)
            [0.6, 0.8, 0.0],  # t03 -> ref t02 (0.8)
            [0.6, 0.0, 0.8],  # t04 -> ref t03 (0.8), shared with derived t01
        ]
    )
    matching = match_traits(derived, REFERENCE, derived_vectors, reference_vectors, 0.8)
    assert matching.pairs == [
        ("t01", "t03", 1.0),
        ("t02", "t01", 0.8),
        ("t03", "t02", 0.8),
        ("t04", "t03", 0.8),
    ]
    assert matching.table["shares_reference"].tolist() == [True, False, False, True]
    strict = match_traits(derived, REFERENCE, derived_vectors, reference_vectors, 0.81)
    assert strict.matched_ids == ["t01"] and strict.unmatched_ids == ["t02", "t03", "t04"]
    # a tie goes to the smaller reference id, whatever the reference's order
    tied = match_traits(
        derived.subset(["t01"]), REFERENCE, np.array([[0.0, 1.0, 1.0]]), reference_vectors, 0.5
    )
    reordered = REFERENCE.subset(["t03", "t02", "t01"])
    tied_again = match_traits(
        derived.subset(["t01"]),
        reordered,
        np.array([[0.0, 1.0, 1.0]]),
        reference_vectors[[2, 1, 0]],
        0.5,
    )
    assert tied.pairs[0][1] == tied_again.pairs[0][1] == "t02"


def test_matched_witnesses_are_keyed_by_derived_ids_and_no_match_is_an_error():
    derived = _questionnaire("derived", {"t01": "x", "t02": "y"})
    matching = match_traits(derived, REFERENCE, np.array([[0, 0, 1.0], [1.0, 0, 0]]), np.eye(3))
    reference = pd.DataFrame(
        {
            "game_id": [1, 1],
            "witness": ["A", "B"],
            "is_human": [1, 0],
            "_row": [1, 1],
            "t01": [5.0, 1.0],
            "t02": [2.0, 2.0],
            "t03": [4.0, 3.0],
        }
    )
    frame = matched_witnesses(reference, matching)
    assert frame["t01"].tolist() == [4.0, 3.0] and frame["t02"].tolist() == [5.0, 1.0]
    none = match_traits(derived, REFERENCE, np.array([[0, 0, 1.0], [1.0, 0, 0]]), np.eye(3) * -1)
    with pytest.raises(TraitMatchingError, match=r"no derived trait reaches cosine 0\.70"):
        matched_witnesses(reference, none)


# Derived-style rewordings of HAL32Q traits (as derive_traits writes them) and two traits no
# HAL32Q statement covers. Ids are shuffled against HAL32Q's.
DERIVED_TEXTS = {
    "t01": "Uses casual texting style with lowercase and small typos.",
    "t02": "Discusses the tax code of medieval Venice in detail.",
    "t03": "Shows minor typos and informal grammar.",
    "t04": "Shows reciprocity by asking the other person a question.",
    "t05": "Shifts topics organically, sometimes with minimal one-word prompts.",
    "t06": "Recites prime numbers when greeted.",
    "t07": "Avoids formal, textbook phrasing or technical formatting.",
}


@pytest.mark.slow
def test_derived_questionnaire_reward_fitted_end_to_end_offline(data_dir, tmp_path):
    hal32q = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    derived = _questionnaire("derived-test", DERIVED_TEXTS)
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite", model_name="minilm:single")
    matching = match_traits(
        derived, hal32q, embed_questionnaire(derived, cache), embed_questionnaire(hal32q, cache)
    )
    assert set(matching.unmatched_ids) == {"t02", "t06"}
    assert dict((d, r) for d, r, _ in matching.pairs)["t03"] == "t04"  # typos, informal grammar
    witnesses = matched_witnesses(
        witness_ratings(read_table(data_dir / "turing/ratings32_gpt-5.csv"), hal32q), matching
    )
    ids = matching.matched_ids
    assert set(ids) <= set(witnesses.columns) and "t06" not in witnesses.columns
    fit = fit_reward(witnesses, ids, RewardConfig(paper_cv_seeds=(57,)))
    assert set(fit.reward.trait_ids) <= set(ids)
    assert fit.grouped_cv_accuracy > 0.65 and fit.paired_accuracy > 0.7
    shape = ShapeRewardRegression(C=0.01).fit(witnesses[ids], witnesses["is_human"])
    assert shape.to_reward().trait_ids == sorted(ids)
    # cached: a second embedding pass reads the vectors back, bit for bit
    np.testing.assert_array_equal(
        embed_questionnaire(derived, cache), embed_questionnaire(derived, cache)
    )
