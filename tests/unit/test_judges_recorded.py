"""Recorded ratings replay faithfully: published weights reproduce the stored HL scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.judges import RecordedColumns, RecordedJudgeConfig, build_judge
from hal_core.judging import Game, JudgeConfigurationError, JudgeError
from hal_core.questionnaire import Questionnaire, Trait

TAGS = SpeakerTags.doctor_visit()


def _published_questionnaire(data_dir: Path) -> Questionnaire:
    """HAL16Q as published: ids t01..t16 in its rating order (local to this questionnaire)."""
    payload = json.loads((data_dir / "questionnaires/hal16q_published.json").read_text())
    return Questionnaire(
        name="hal16q-published",
        scale=payload["scale"],
        traits=tuple(
            Trait(id=f"t{item['position']:02d}", text=item["text"])
            for item in payload["statements_in_rating_order"]
        ),
    )


def _score_tolerance(terms: list[float], stored: str) -> float:
    """How far a replayed score may sit from the stored one when both sum ``terms`` (the 16
    products w_i * x_i and the bias) in any order, and the stored one was then written with
    as many decimals as ``stored`` shows.

    Each float sum of n terms, in any order, with or without fused multiply-adds, lies within
    gamma_n * sum|terms| of the exact sum (gamma_n = n*u/(1 - n*u), u = eps/2; Higham,
    "Accuracy and Stability of Numerical Algorithms", 3.1), so two sums lie within
    ~n * eps * sum|terms| of each other; we allow twice that. With ratings 1..5 and these
    weights sum|terms| < 37, so this part is < 3e-13 on scores < 10 in magnitude: 50 times
    the largest gap seen across np.dot, a reversed sum and math.fsum (2.7e-15), and far below
    what a rating off by one changes (>= 0.12, the smallest |w_i|). A score written with d
    decimals adds half a unit of the d-th (5e-11 for the files written with 10 decimals).
    """
    summation = 2 * len(terms) * np.finfo(float).eps * math.fsum(abs(t) for t in terms)
    written = 0.0 if "e" in stored.lower() else 0.5 * 10.0 ** -len(stored.split(".")[1])
    return summation + written


def _same_as_stored(value: float, stored: str, terms: list[float]) -> bool:
    """Equal to the stored score up to summation order and the precision it was written with."""
    return abs(value - float(stored)) <= _score_tolerance(terms, stored)


def test_replay_reproduces_every_stored_hal16_score(data_dir: Path) -> None:
    questionnaire = _published_questionnaire(data_dir)
    paper = json.loads((data_dir / "hal16_weights_paper.json").read_text())
    weights, bias = np.asarray(paper["w"], dtype=float), float(paper["b"])
    checked = reported = 0
    for folder in sorted((data_dir / "aligned_outputs").iterdir()):
        files = sorted(folder.glob("*.csv"))
        judge = build_judge(RecordedJudgeConfig(paths=files))
        for path in files:
            stored = pd.read_csv(path, dtype={"hal16_score": str})
            results = judge.rate(stored["dialogue"].tolist(), questionnaire, TAGS)
            assert all(result.ok for result in results), path
            ratings = pd.DataFrame([r.ratings for r in results])[questionnaire.trait_ids]
            rows = [np.array([r.ratings[t] for t in questionnaire.trait_ids]) for r in results]
            products = [[float(p) for p in row * weights] for row in rows]
            terms = [[*row, bias] for row in products]
            # the check holds whatever the order of summation: BLAS's (which differs between
            # CPUs, e.g. AVX-512 kernels), the reverse of it, and the correctly rounded sum
            sums = {
                "np.dot": [float(np.dot(row, weights)) + bias for row in rows],
                "reversed sum": [sum(reversed(row)) + bias for row in products],
                "math.fsum": [math.fsum(row) for row in terms],
            }
            for order, scores in sums.items():
                mismatched = [
                    (i, s, t)
                    for i, (s, t, ts) in enumerate(
                        zip(scores, stored["hal16_score"], terms, strict=True)
                    )
                    if not _same_as_stored(s, t, ts)
                ]
                assert not mismatched, f"{path} ({order}): {mismatched[:3]}"
            # ...and it can fail: a score off by 1e-6 (far less than any change of a weight
            # or a rating) is caught on every row
            off = [s + 1e-6 for s in sums["math.fsum"]]
            assert not any(
                _same_as_stored(s, t, ts)
                for s, t, ts in zip(off, stored["hal16_score"], terms, strict=True)
            ), path
            if stored["hal16_score"][0] == "-3.0971753202839154":
                # what np.dot gave for this row on an AVX-512 OpenBLAS (issue 24) is accepted
                assert _same_as_stored(-3.0971753202839167, stored["hal16_score"][0], terms[0])
                reported += 1
            scores = sums["np.dot"]
            try:  # the project's reward, by trait id, agrees within the same bound
                from hal_core.reward import HLReward
            except ImportError:
                pass
            else:
                reward = HLReward(dict(zip(questionnaire.trait_ids, weights, strict=True)), bias)
                gaps = np.abs(reward.score(ratings) - np.asarray(scores))
                bounds = [
                    _score_tolerance(ts, repr(s)) for ts, s in zip(terms, scores, strict=True)
                ]
                assert (gaps <= bounds).all(), path
            checked += len(stored)
    assert checked == 3900 and reported == 1


def _write(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


MINI = Questionnaire(name="mini", traits=(Trait(id="t01", text="a"), Trait(id="t02", text="b")))


def test_missing_dialogue_is_a_failure_never_a_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.csv", [{"dialogue": "D: hi\nP: yo", "likert_evaluation": "[4, 2]"}])
    judge = build_judge(RecordedJudgeConfig(paths=[path]))
    known, unknown = judge.rate(["D: hi  \r\nP: yo\n", "D: hi\nP: other"], MINI, TAGS)
    assert known.ratings == {"t01": 4.0, "t02": 2.0}
    assert unknown.ratings is None and unknown.error_kind == "missing"
    assert "no recorded rating" in unknown.error
    strict = build_judge(RecordedJudgeConfig(paths=[path], strict=True))
    with pytest.raises(JudgeError, match="no recorded rating"):
        strict.rate(["D: hi\nP: other"], MINI, TAGS)


def test_conflicting_recordings_stop_unless_first_wins(tmp_path: Path) -> None:
    rows = [{"dialogue": "D: hi\nP: yo", "likert_evaluation": r} for r in ("[4, 2]", "[1, 1]")]
    path = _write(tmp_path, "r.csv", rows)
    with pytest.raises(JudgeConfigurationError, match=r"r\.csv row 2: the same dialogue"):
        build_judge(RecordedJudgeConfig(paths=[path]))
    judge = build_judge(RecordedJudgeConfig(paths=[path], on_conflict="first"))
    assert judge.rate(["D: hi\nP: yo"], MINI, TAGS)[0].ratings == {"t01": 4.0, "t02": 2.0}


def test_positions_map_to_ids_of_the_order_questionnaire(tmp_path: Path) -> None:
    order = MINI.save(tmp_path / "order.json")
    path = _write(tmp_path, "r.csv", [{"text": "D: hi\nP: yo", "r": "[4, 2]"}])
    config = RecordedJudgeConfig(
        paths=[path], columns=[RecordedColumns(text="text", ratings="r")], order_questionnaire=order
    )
    judge = build_judge(config)
    reordered = MINI.subset(["t02", "t01"])
    assert judge.rate(["D: hi\nP: yo"], reordered, TAGS)[0].ratings == {"t02": 2.0, "t01": 4.0}


def test_a_ratings_table_with_trait_id_columns_replays(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "ratings.csv",
        [{"dialogue": "D: hi\nP: yo", "t01": 3, "t02": 5, "status": "rated"}],
    )
    config = RecordedJudgeConfig(paths=[path], columns=[RecordedColumns(ratings=None)])
    assert build_judge(config).rate(["D: hi\nP: yo"], MINI, TAGS)[0].ratings == {
        "t01": 3.0,
        "t02": 5.0,
    }


def test_recorded_statements_replay_by_game_transcripts(data_dir: Path) -> None:
    games = pd.read_csv(data_dir / "turing/statements_gpt-5.csv").head(3)
    config = RecordedJudgeConfig(statements_paths=["turing/statements_gpt-5.csv"])
    judge = build_judge(config, data_dir=data_dir)
    asked = [
        Game(
            game_id=str(row.game_id),
            transcript_a=row.conversation_A_transcript,
            transcript_b=row.conversation_B_transcript,
        )
        for row in games.itertuples()
    ]
    unknown = Game(game_id="x", transcript_a="I: hi\nW: yo", transcript_b="I: hi\nW: hello")
    *proposals, missing = judge.propose_statements([*asked, unknown], SpeakerTags.turing())
    assert [p.verdict for p in proposals] == games["aijudge_verdict"].tolist()
    assert [p.statements for p in proposals] == [
        json.loads(c) for c in games["human_characteristics"]
    ]
    assert [p.latency_s for p in proposals] == pytest.approx(games["elapsed_time"].tolist())
    assert not missing.ok and missing.error_kind == "missing"


def test_a_recorded_judge_must_replay_ratings_or_statements() -> None:
    with pytest.raises(ValueError, match=r"paths \(ratings\) or statements_paths"):
        RecordedJudgeConfig()
