"""Generated-dialogue evaluation: reading the contract, per-persona pairing, guards against
reward hacking, the promotion rule, before/after examples and NaN-free JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.evaluation import (
    GuardReport,
    GuardThresholds,
    before_after_markdown,
    check_guards,
    combine_generated,
    decide_champion,
    evaluate_scores,
    json_safe,
    pick_before_after,
    read_generated,
    text_statistics,
)
from hal_core.tables import TableError
from tests.fakes.generated import PERSONAS, SYMPTOMS, casual, formal, generated_table

TAGS = SpeakerTags.doctor_visit()


def write(tmp_path: Path, table: pd.DataFrame, name: str) -> Path:
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def two_epochs(tmp_path: Path, trained: list[tuple[str, str]], **kwargs) -> pd.DataFrame:
    base = generated_table(0, [(p, formal(s)) for p, s in zip(PERSONAS, SYMPTOMS, strict=True)])
    paths = [
        write(tmp_path, base, "e0.csv"),
        write(tmp_path, generated_table(1, trained, **kwargs), "e1.csv"),
    ]
    return combine_generated([read_generated(path) for path in paths])


def test_reading_a_generated_table_pairs_by_persona_and_keeps_degenerate_reasons(
    tmp_path: Path,
) -> None:
    table = generated_table(1, [("a", "P: hi\nD: yo"), ("a", "P: x")], degenerate={1: "too_short"})
    frame = read_generated(write(tmp_path, table, "t.csv"))
    assert frame["prompt_id"].tolist() == ["a", "a"]
    assert frame["degenerate"].tolist() == ["", "too_short"]  # empty cell read as NaN -> ""
    assert frame["sample_index"].tolist() == [0, 1] and frame["epoch"].tolist() == [1, 1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["degenerate"]), r"missing columns \['degenerate'\]"),
        (lambda t: t.assign(epoch=[1, 2]), r"epochs \[1, 2\] \(rule: one table per checkpoint\)"),
        (lambda t: t.assign(n_turns=[1, -1]), r"rows \[2\]: n_turns must be a non-negative"),
        (lambda t: t.assign(prompt_id=["a", "zzz"]), r"rows \[2\]: prompt_id differs"),
        (lambda t: t.assign(dialogue_id=["x", "x"]), r"rows \[1, 2\]: dialogue_id repeats"),
    ],
)
def test_a_table_breaking_the_contract_names_file_row_and_rule(
    tmp_path: Path, change, message: str
) -> None:
    table = change(generated_table(1, [("a", "P: hi"), ("b", "P: yo")]))
    path = write(tmp_path, table, "bad.csv")
    with pytest.raises(TableError, match=message) as error:
        read_generated(path)
    assert str(path) in str(error.value)


def test_combining_tables_needs_one_model_distinct_epochs_and_the_base(tmp_path: Path) -> None:
    e0 = read_generated(write(tmp_path, generated_table(0, [("a", "P: hi")]), "e0.csv"))
    e1 = read_generated(write(tmp_path, generated_table(1, [("a", "P: yo")]), "e1.csv"))
    assert sorted(combine_generated([e0, e1])["epoch"]) == [0, 1]
    with pytest.raises(TableError, match=r"epoch 1 also in .*e1\.csv"):
        combine_generated([e0, e1, e1.copy()])
    with pytest.raises(TableError, match=r"no table of the base epoch 0"):
        combine_generated([e1])
    other = generated_table(1, [("a", "P: yo")], model="another")
    other = read_generated(write(tmp_path, other, "other.csv"))
    with pytest.raises(TableError, match=r"models \['another', 'tiny-base'\]"):
        combine_generated([e0, other])


def test_several_samples_of_a_persona_count_once_in_the_paired_test() -> None:
    from scipy import stats

    rows = []
    for k, persona in enumerate(["a", "b", "c"]):
        rows.append(("m", 0, persona, 0.5 * k, 3.0))
        rows += [("m", 1, persona, float(k) + 1.0, 3.0), ("m", 1, persona, float(k) + 3.0, 3.0)]
    scored = pd.DataFrame(rows, columns=["model", "epoch", "prompt_id", "hl", "t01"])
    report = evaluate_scores(scored, ["t01"])
    row = report.summary.set_index("epoch").loc[1]
    assert (row["n"], row["n_dialogues"], row["n_pairs"]) == (3, 6, 3)
    # per persona: mean(k + 1, k + 3) - 0.5 k = 2 + 0.5 k
    assert row["gain"] == pytest.approx(2.5)
    expected = stats.ttest_rel([2.0, 3.0, 4.0], [0.0, 0.5, 1.0], alternative="greater")
    assert row["p"] == pytest.approx(expected.pvalue)
    assert report.candidate_epoch("m") == 1


def test_text_statistics_measure_length_turns_repetition_and_format_failures(
    tmp_path: Path,
) -> None:
    repeated = "D: hi\nP: same words here\nD: and?\nP: Same  words here\nD: ok\nP: other words"
    trained = [(PERSONAS[0], repeated), (PERSONAS[1], "D: hi\nD: only the doctor")]
    trained += [(p, casual(s)) for p, s in zip(PERSONAS[2:], SYMPTOMS[2:], strict=True)]
    trained.append((PERSONAS[2], "P: junk"))
    responses = two_epochs(tmp_path, trained, degenerate={len(trained) - 1: "too_short"})
    unreadable = responses.index[responses["dialogue"].str.startswith("D: hi\nD:")]
    stats = text_statistics(responses, TAGS, unreadable).set_index("epoch")
    assert stats.loc[1, "n_dialogues"] == 13 and stats.loc[1, "n_degenerate"] == 1
    assert stats.loc[1, "format_failures"] == pytest.approx(2 / 13)  # degenerate + unreadable
    assert stats.loc[0, "format_failures"] == 0.0
    # 33 patient turns in fine dialogues (10 casual x 3 + 3), one repeats (case and spaces aside)
    assert stats.loc[1, "repeated_lines"] == pytest.approx(1 / 33)
    assert stats.loc[0, "turns"] == 3.0
    words = [len(t.split()) for t in ("same words here", "Same  words here", "other words")]
    fine = responses[(responses["epoch"] == 1) & (responses["degenerate"] == "")]
    fine = fine[fine["n_turns"] > 0]
    assert len(fine) == 11  # the doctor-only dialogue has no patient turn
    expected = (fine["patient_words"] / fine["n_turns"]).mean()
    assert stats.loc[1, "words_per_turn"] == pytest.approx(expected)
    assert fine.iloc[0]["patient_words"] == sum(words)
    assert 0 < stats.loc[1, "distinct_2"] < 1 and 0 < stats.loc[0, "distinct_2"] < 1


def statistics(**epoch1: float) -> pd.DataFrame:
    base = {"words_per_turn": 20.0, "turns": 4.0, "distinct_2": 0.5, "repeated_lines": 0.0}
    base |= {"format_failures": 0.0}
    rows = [{"model": "m", "epoch": 0, **base}, {"model": "m", "epoch": 1, **(base | epoch1)}]
    return pd.DataFrame(rows)


def test_guards_hold_within_their_limits_and_fail_beyond() -> None:
    limits = GuardThresholds()
    fine = check_guards(
        statistics(words_per_turn=11.0, turns=5.0, distinct_2=0.41, repeated_lines=0.1),
        "m",
        1,
        0,
        limits,
    )
    assert fine.passed and fine.failed == []
    values = {c.name: c.value for c in fine.checks}
    assert values == pytest.approx(
        {
            "words_per_turn_drift": 0.45,
            "turns_drift": 0.25,
            "distinct_2_ratio": 0.82,
            "repeated_lines": 0.1,
            "format_failures": 0.0,
        }
    )
    assert {c.name: c.rule for c in fine.checks}["distinct_2_ratio"] == ">="
    assert all(c.description for c in fine.checks)

    hacked = check_guards(
        statistics(
            words_per_turn=9.0, turns=1.0, distinct_2=0.3, repeated_lines=0.2, format_failures=0.2
        ),
        "m",
        1,
        0,
        limits,
    )
    assert hacked.failed == [
        "words_per_turn_drift",
        "turns_drift",
        "distinct_2_ratio",
        "repeated_lines",
        "format_failures",
    ]
    longer = check_guards(statistics(words_per_turn=31.0), "m", 1, 0, limits)
    assert longer.failed == ["words_per_turn_drift"]  # drift counts both ways


def test_a_guard_that_cannot_be_measured_fails_and_says_why() -> None:
    report = check_guards(
        statistics(words_per_turn=float("nan"), distinct_2=float("nan")),
        "m",
        1,
        0,
        GuardThresholds(),
    )
    failed = {c.name: c for c in report.checks if not c.passed}
    assert set(failed) == {"words_per_turn_drift", "distinct_2_ratio"}
    assert all(c.value is None and c.note.startswith("not measurable") for c in failed.values())


def guards(passed: bool) -> GuardReport:
    stats = statistics() if passed else statistics(repeated_lines=0.5)
    return check_guards(stats, "m", 1, 0, GuardThresholds())


@pytest.mark.parametrize(
    ("gain", "p", "second", "has_second", "passed", "promote", "why"),
    [
        (0.8, 0.001, 0.3, True, True, True, "all 5 hold"),
        (0.8, 0.049, 0.0, True, True, True, "not negative"),
        (0.8, 0.05, 0.3, True, True, False, "not significant at 0.05"),
        (0.8, 0.001, -0.01, True, True, False, "second judge: gain -0.0100 (negative)"),
        (0.8, 0.001, None, False, True, False, "none configured"),
        (0.8, 0.001, float("nan"), True, True, False, "cannot be computed"),
        (0.8, float("nan"), 0.3, True, True, False, "p-value cannot be computed"),
        (0.8, 0.001, 0.3, True, False, False, "guards: 1 failed: repeated_lines = 0.5"),
    ],
)
def test_champion_moves_only_when_all_three_rules_hold(
    gain, p, second, has_second, passed, promote, why
) -> None:
    decision = decide_champion(gain, p, second, guards(passed), has_second_judge=has_second)
    assert decision.promote is promote
    assert len(decision.reasons) == 3
    assert any(why in reason for reason in decision.reasons), decision.reasons


def test_before_after_examples_are_the_median_best_and_worst_persona_deterministically(
    tmp_path: Path,
) -> None:
    trained = [(p, casual(s)) for p, s in zip(PERSONAS, SYMPTOMS, strict=True)]
    trained.append((PERSONAS[5], "P: a second sample of persona 5 (sample 1: not shown)"))
    responses = two_epochs(tmp_path, trained)
    hl = {p: float(k) for k, p in enumerate(PERSONAS)}  # base HL by persona
    gain = {p: float((k * 7) % 12) - 5.0 for k, p in enumerate(PERSONAS)}
    scores = [
        hl[row.persona_id] + (gain[row.persona_id] if row.epoch == 1 else 0.0)
        for row in responses.itertuples()
    ]
    scored = responses[["model", "epoch", "prompt_id"]].assign(hl=scores)
    first = pick_before_after(responses, scored, "tiny-base", 0, 1)
    again = pick_before_after(responses.iloc[::-1], scored.iloc[::-1], "tiny-base", 0, 1)
    assert [e.model_dump() for e in first] == [e.model_dump() for e in again]
    by_label = {e.label: e for e in first}
    ordered = sorted(PERSONAS, key=lambda p: (gain[p], p))
    assert by_label["largest gain"].persona_id == max(
        PERSONAS, key=lambda p: (gain[p], -int(p[-2:]))
    )
    assert by_label["largest loss"].persona_id == ordered[0]
    assert by_label["typical (median gain)"].persona_id == ordered[(len(ordered) - 1) // 2]
    three = by_label["largest gain"]
    assert three.before.epoch == 0 and three.after.epoch == 1
    assert three.after.hl - three.before.hl == pytest.approx(three.gain)
    assert three.before.dialogue_id.endswith("-base-s0-0")
    assert three.persona_id == PERSONAS[5]  # gain 6, the largest
    assert three.after.dialogue_id.endswith("-epoch-1-s0-0") and "second sample" not in str(first)
    markdown = before_after_markdown(first)
    assert three.before.dialogue in markdown and three.after.dialogue in markdown
    assert f"persona {three.persona_id}: largest gain" in markdown


def test_json_safe_turns_nan_into_null_so_strict_json_accepts_it() -> None:
    payload = {"gain": float("nan"), "p": np.float64("inf"), "n": np.int64(3), "by": [1.5, None]}
    text = json.dumps(json_safe(payload), allow_nan=False)
    assert json.loads(text) == {"gain": None, "p": None, "n": 3, "by": [1.5, None]}


def test_out_of_domain_flags_give_a_share_per_epoch_when_a_judge_reports_them() -> None:
    from hal_core.evaluation import judged_ratings, out_of_domain_fractions
    from hal_core.judges.runner import RatingRun, RatingStats
    from hal_core.judging import RatingResult

    class FlaggedResult(RatingResult):
        """A result as a judge that reports its domain would give it."""

        out_of_domain: bool | None = None

    flags = [True, False, None, False, True]
    results = {
        f"k{i}": FlaggedResult(item_id=f"k{i}", ratings={"t01": 3.0}, out_of_domain=flag)
        for i, flag in enumerate(flags)
    }
    run = RatingRun(list(results), results, RatingStats(), "fp", "v")
    index = pd.Index([10, 11, 12, 13, 14])
    responses = pd.DataFrame({"model": "m", "epoch": [0, 0, 1, 1, 1]}, index=index)
    judged = judged_ratings(run, ["t01"], index)
    assert out_of_domain_fractions(judged, responses) == {("m", 0): 0.5, ("m", 1): 0.5}
    plain = {k: RatingResult(item_id=k, ratings={"t01": 3.0}) for k in results}
    silent = judged_ratings(RatingRun(list(plain), plain, RatingStats(), "fp", "v"), ["t01"], index)
    assert out_of_domain_fractions(silent, responses) == {}  # never said: no share


def test_generated_mode_parameters_need_a_judge_config_and_a_checkpoints_folder() -> None:
    from pydantic import ValidationError

    from flows.evaluate import EvaluateParams, PolicyRegistration

    local = {"backend": "local", "model_path": "judge"}
    with pytest.raises(ValidationError, match="generated_files need a judge config"):
        EvaluateParams(generated_files=["e0.csv"])
    with pytest.raises(ValidationError, match=r"policy\.checkpoints_dir must name"):
        EvaluateParams(generated_files=["e0.csv"], judge=local)
    unregistered = EvaluateParams(
        generated_files=["e0.csv"], judge=local, policy=PolicyRegistration(register_as=None)
    )
    assert unregistered.policy.alias == "champion" and unregistered.guards == GuardThresholds()
    assert EvaluateParams().judge == "recorded"  # published responses replay their ratings
    roundtrip = EvaluateParams.model_validate(
        EvaluateParams(
            generated_files=["e0.csv"],
            judge=local,
            second_judge=local,
            policy=PolicyRegistration(checkpoints_dir="adapters"),
        ).model_dump(mode="json")
    )
    assert roundtrip.second_judge.backend == "local" and roundtrip.judge.model_path == "judge"
