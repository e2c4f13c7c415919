"""Preference pairs: k·σ margin, pairs only within a prompt, split by prompt, nothing dropped."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags, rated_turns
from hal_core.generation import load_candidates
from hal_core.preferences import (
    PreferenceError,
    attach_scores,
    build_pairs,
    split_by_prompt,
    to_dataset_dict,
)


def turn_length_score(text: str) -> float:
    """A transparent stand-in for an HL score: shorter patient turns score higher."""
    turns = rated_turns(text, SpeakerTags.doctor_visit())
    return float(-np.log(np.mean([len(t.split()) for t in turns]))) if turns else float("nan")


@pytest.fixture(scope="module")
def scored_candidates(data_dir) -> pd.DataFrame:
    candidates = load_candidates(
        data_dir / "synthlabs" / "candidates_test.csv", data_dir / "synthlabs" / "prompts_test.csv"
    )
    return candidates.assign(hl=candidates["response"].map(turn_length_score))


def table(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "prompt_id": p,
                "prompt": f"prompt {p}",
                "candidate_id": c,
                "response": f"r {c}",
                "hl": s,
            }
            for p, c, s in rows
        ]
    )


def test_every_pair_on_real_candidates_clears_k_sigma(scored_candidates):
    result = build_pairs(scored_candidates, k=0.5)
    pairs = result.pairs
    sigma = float(np.std(scored_candidates["hl"].dropna()))

    assert result.sigma == pytest.approx(sigma)
    assert len(pairs) > 100
    assert (pairs["chosen_score"] - pairs["rejected_score"] > 0.5 * sigma).all()
    assert (pairs["chosen"] != pairs["rejected"]).all()
    by_id = scored_candidates.set_index("candidate_id")
    assert (by_id.loc[pairs["chosen_id"], "prompt_id"].to_numpy() == pairs["prompt_id"]).all()
    assert (by_id.loc[pairs["rejected_id"], "prompt_id"].to_numpy() == pairs["prompt_id"]).all()
    # Brute force: one pair for every same-prompt couple whose scores differ by more than k·σ.
    expected = 0
    for _, group in scored_candidates.groupby("prompt_id"):
        for a, b in combinations(group["hl"].dropna(), 2):
            expected += abs(a - b) > 0.5 * sigma
    assert len(pairs) == expected
    stats = result.stats()
    assert stats["n_pairs"] == len(pairs)
    assert sum(stats["delta_histogram"]["counts"]) == len(pairs)
    assert stats["prompts_covered"] == pairs["prompt_id"].nunique() <= stats["n_prompts"] == 200


def test_larger_k_gives_fewer_pairs_with_wider_margins(scored_candidates):
    loose = build_pairs(scored_candidates, k=0.25).pairs
    strict = build_pairs(scored_candidates, k=1.0).pairs
    assert len(strict) < len(loose)
    assert strict["delta"].min() > loose["delta"].min()


def test_chosen_is_the_higher_score_whatever_the_row_order():
    rows = [("p1", "a", 1.0), ("p1", "b", 3.0), ("p1", "c", 2.0), ("p2", "d", 0.0)]
    forward = build_pairs(table(rows), k=0.1).pairs
    backward = build_pairs(table(rows[::-1]), k=0.1).pairs
    key = ["chosen_id", "rejected_id"]
    assert sorted(map(tuple, forward[key].to_numpy())) == [("b", "a"), ("b", "c"), ("c", "a")]
    assert sorted(map(tuple, backward[key].to_numpy())) == sorted(
        map(tuple, forward[key].to_numpy())
    )
    assert set(forward["pair_id"]) == set(backward["pair_id"])


def test_unscored_and_empty_candidates_are_excluded_with_a_reason():
    frame = table([("p1", "a", 1.0), ("p1", "b", np.nan), ("p1", "c", 5.0), ("p1", "d", 4.0)])
    frame.loc[3, "response"] = "  "
    result = build_pairs(frame, k=0.0)
    assert dict(zip(result.excluded["candidate_id"], result.excluded["reason"], strict=True)) == {
        "b": "no HL score",
        "d": "empty response",
    }
    assert list(result.pairs["chosen_id"]) == ["c"]
    assert result.stats()["n_excluded"] == 2


def test_duplicate_candidate_ids_name_the_row():
    frame = table([("p1", "a", 1.0), ("p1", "a", 2.0)])
    frame["_row"] = [7, 8]
    frame.attrs["source"] = "cands.csv"
    with pytest.raises(PreferenceError, match=r"cands.csv row 7: candidate_id 'a' is not unique"):
        build_pairs(frame)


def test_missing_columns_are_named():
    with pytest.raises(PreferenceError, match=r"\['hl'\]"):
        build_pairs(table([("p1", "a", 1.0)]).drop(columns="hl"))


def test_split_keeps_each_prompt_on_one_side(scored_candidates):
    pairs = build_pairs(scored_candidates).pairs
    splits = split_by_prompt(pairs, test_fraction=0.1, seed=3)
    train_prompts = set(splits["train"]["prompt_id"])
    test_prompts = set(splits["test"]["prompt_id"])
    assert not train_prompts & test_prompts
    assert len(splits["train"]) + len(splits["test"]) == len(pairs)
    assert len(test_prompts) == round(0.1 * pairs["prompt_id"].nunique())
    again = split_by_prompt(pairs, test_fraction=0.1, seed=3)
    assert set(again["test"]["prompt_id"]) == test_prompts


def test_dataset_dict_carries_texts_scores_and_ids(scored_candidates):
    pairs = build_pairs(scored_candidates.head(40)).pairs
    dataset = to_dataset_dict(split_by_prompt(pairs, 0.2))
    assert set(dataset) == {"train", "test"}
    assert {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "prompt_id"} <= set(
        dataset["train"].column_names
    )
    first = dataset["train"][0]
    assert first["chosen_score"] > first["rejected_score"]


def test_an_empty_split_is_left_out_so_the_pairs_load_back(scored_candidates, tmp_path):
    from datasets import load_from_disk

    pairs = build_pairs(scored_candidates.head(40)).pairs
    to_dataset_dict({"train": pairs, "test": pairs.head(0)}).save_to_disk(str(tmp_path / "d"))
    loaded = load_from_disk(str(tmp_path / "d"))
    assert set(loaded) == {"train"} and len(loaded["train"]) == len(pairs)


def test_attach_scores_joins_by_id_and_records_misses():
    frame = table([("p1", "a", 0.0), ("p1", "b", 0.0)]).drop(columns="hl")
    scores = pd.DataFrame({"candidate_id": ["b"], "hl": [2.5]})
    scores.attrs["source"] = "s.csv"
    scored = attach_scores(frame, scores)
    assert scored["hl"].tolist()[1] == 2.5
    assert np.isnan(scored["hl"].tolist()[0])
    assert scored["score_error"].tolist()[0] == "no score in s.csv"
    assert pd.isna(scored["score_error"].tolist()[1])


def test_degenerate_candidates_are_excluded_with_their_reason():
    frame = table([("p", "a", 1.0), ("p", "b", 0.0), ("p", "c", 2.0)])
    frame["degenerate"] = ["", "", "repeated_lines"]
    result = build_pairs(frame, k=0.0)
    assert result.pairs[["chosen_id", "rejected_id"]].values.tolist() == [["a", "b"]]
    assert result.excluded["reason"].tolist() == ["degenerate: repeated_lines"]


def test_a_prompt_keeps_its_largest_differences_up_to_the_cap():
    frame = table([("p", "a", 0.0), ("p", "b", 1.0), ("p", "c", 3.0), ("p", "d", 3.5)])
    capped = build_pairs(frame, k=0.0, max_pairs_per_prompt=2).pairs
    assert sorted(capped["delta"].tolist()) == [3.0, 3.5]
    assert len(build_pairs(frame, k=0.0).pairs) == 6


def test_pairs_of_two_out_of_domain_dialogues_are_dropped_when_asked():
    frame = table([("p", "a", 0.0), ("p", "b", 1.0), ("p", "c", 2.0)])
    frame["out_of_domain"] = [True, True, None]
    kept = build_pairs(frame, k=0.0, drop_both_out_of_domain=True)
    assert sorted(map(sorted, kept.pairs[["chosen_id", "rejected_id"]].values.tolist())) == [
        ["a", "c"],
        ["b", "c"],
    ]
    assert kept.stats()["n_dropped_out_of_domain"] == 1
    assert len(build_pairs(frame, k=0.0).pairs) == 3


def test_a_generated_table_brings_its_own_prompts(tmp_path):
    from hal_core.dialogue_generation import DIALOGUE_COLUMNS

    rows = [
        {column: "" for column in DIALOGUE_COLUMNS}
        | {
            "dialogue_id": f"7-base-s0-{i}",
            "persona_id": 7,
            "prompt_id": 7,
            "model": "m",
            "system_prompt": "You are Ann, a patient.",
            "dialogue": f"D: Hi.\nP: Hello {i}.",
            "degenerate": "empty" if i == 2 else "",
        }
        for i in range(3)
    ]
    path = tmp_path / "generated.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    candidates = load_candidates(path, tmp_path / "no-prompts-needed.csv")
    assert candidates["prompt"].tolist() == ["You are Ann, a patient."] * 3
    assert candidates["candidate_id"].tolist() == ["7-base-s0-0", "7-base-s0-1", "7-base-s0-2"]
    assert candidates["degenerate"].tolist() == ["", "", "empty"]
