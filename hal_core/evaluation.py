"""Evaluating aligned models: HL score per epoch, paired tests against the base, trait shifts,
guards against reward hacking and the rule that promotes a policy.

The unit of evaluation is a persona (test prompt) at a training epoch: its dialogues' HL scores
are averaged, so several samples per persona count once. Epoch ``base_epoch`` (0) is the model
before alignment; every other epoch is compared with it, paired by persona. Per-trait shifts of
the mean Likert rating, base to epoch, show what alignment changed besides the HL score (the
paper's diagnosis of unintended effects).

Two inputs are read: the published ``aligned_outputs/<model>/samples_epoch_XX_*.csv`` files
(ratings recorded next to each response) and the generated-dialogues tables of the
``generate`` stage (one CSV per checkpoint; ``degenerate`` rows are reported, not rated).

A gain the reward sees can come from gaming it: replies that shrink, conversations that end
early, repeated lines, a collapse to one template, broken formats. :func:`check_guards`
measures each against the base; :func:`decide_champion` promotes a policy only when the gain is
significant under the training judge, not negative under a second judge, and no guard fails.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from hal_core import markdown
from hal_core.dialogue import SpeakerTags, parse_dialogue
from hal_core.judges.runner import RatingRun
from hal_core.judging import RatingResult
from hal_core.paper import (
    HAL16Q_PUBLISHED_TRAIT_IDS,
    PaperWeights,
    WeightReading,
)
from hal_core.questionnaire import Questionnaire
from hal_core.reward import HLReward
from hal_core.scoring import HL_COLUMN as SCORE_HL_COLUMN
from hal_core.scoring import hl_scores
from hal_core.tables import ROW_COLUMN, TableError, ratings_by_position, read_table

EPOCH_FILE_PATTERN = re.compile(r"^samples_epoch_(\d+)_.*\.csv$")
MODEL_COLUMN, EPOCH_COLUMN, PROMPT_COLUMN, HL_COLUMN = "model", "epoch", "prompt_id", "hl"
SOURCE_COLUMN = "_source"
"""Path of the file a response came from, carried for error messages."""


# --- questionnaire and reward ----------------------------------------------------------------


BY_ID_EXPLANATION = (
    "The stored hal16_score applies the paper's w[k] to the statement at published HAL16Q "
    "position k, but w[k] was fitted on another trait at 14 of 16 positions; hl.paper_compatible "
    "reproduces that score, hl.by_id scores by trait id with the fitted weights of the {n} "
    "traits the published prompt shares with the fitted ones (plus b), leaving the other "
    "statements out."
)


@dataclass(frozen=True)
class EvaluationReward:
    """The reward an evaluation scores with, and the by-id corrected score beside it.

    ``by_id`` is set when the reward is the paper's ``{w, b}`` and the questionnaire is the
    published HAL16Q: then ``reward`` is the paper-compatible reading (w[k] on published
    position k, as the stored ``hal16_score``) and ``by_id`` the fitted weights of the traits
    both share, plus ``b``.
    """

    reward: HLReward
    by_id: HLReward | None = None
    explanation: str = ""


def reward_readings(
    reward: HLReward, questionnaire: Questionnaire, paper: PaperWeights | None = None
) -> EvaluationReward:
    """The reward an evaluation scores with.

    ``paper`` (the published weights ``reward`` was read from, if it was) on the published
    HAL16Q gives the paper-compatible score with the by-id corrected score beside it; any other
    reward scores by trait id as it is.
    """
    if paper is None or set(questionnaire.trait_ids) != set(HAL16Q_PUBLISHED_TRAIT_IDS):
        return EvaluationReward(reward)
    return EvaluationReward(
        reward=_paper_reward(paper, "paper_compatible"),
        by_id=_paper_reward(paper, "shared"),
        explanation=BY_ID_EXPLANATION.format(n=len(paper.weights("shared"))),
    )


def _paper_reward(paper: PaperWeights, reading: WeightReading) -> HLReward:
    return HLReward(
        weights=paper.weights(reading),
        bias=paper.b,
        metadata={"source": paper.source, "reading": reading},
    )


# --- published responses (aligned_outputs) --------------------------------------------------


@dataclass(frozen=True)
class EpochFile:
    """One file of generated responses: a model folder and a training epoch."""

    model: str
    epoch: int
    path: Path


def discover_epoch_files(root: str | Path, models: Sequence[str] | None = None) -> list[EpochFile]:
    """``<root>/<model>/samples_epoch_XX_*.csv`` files, sorted by model then epoch."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: responses folder not found")
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if models:
        unknown = sorted(set(models) - {folder.name for folder in folders})
        if unknown:
            raise FileNotFoundError(
                f"{root}: no model folders {unknown}; found {[f.name for f in folders]}"
            )
        folders = [folder for folder in folders if folder.name in set(models)]
    files = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            match = EPOCH_FILE_PATTERN.match(path.name)
            if match:
                files.append(EpochFile(folder.name, int(match.group(1)), path))
    if not files:
        raise FileNotFoundError(f"{root}: no <model>/samples_epoch_XX_*.csv files")
    seen: dict[tuple[str, int], Path] = {}
    for item in files:
        key = (item.model, item.epoch)
        if key in seen:
            raise ValueError(f"{item.path}: epoch {item.epoch} of {item.model} also in {seen[key]}")
        seen[key] = item.path
    return sorted(files, key=lambda item: (item.model, item.epoch))


def prompt_key(prompt: str) -> str:
    """Stable id of a test prompt (responses are paired across epochs by it)."""
    return hashlib.sha256(str(prompt).encode("utf-8")).hexdigest()[:16]


def read_responses(item: EpochFile) -> pd.DataFrame:
    """One epoch's responses with ``model``, ``epoch`` and ``prompt_id`` columns added."""
    frame = read_table(item.path)
    source = frame.attrs["source"]
    for column in ("prompt", "dialogue"):
        if column not in frame.columns:
            raise TableError(f"{source}: missing column {column!r}")
    frame.insert(1, MODEL_COLUMN, item.model)
    frame.insert(2, EPOCH_COLUMN, item.epoch)
    frame.insert(3, PROMPT_COLUMN, [prompt_key(p) for p in frame["prompt"]])
    frame.insert(4, SOURCE_COLUMN, source)
    repeated = frame[frame[PROMPT_COLUMN].duplicated(keep=False)]
    if not repeated.empty:
        raise TableError(
            f"{source} rows {repeated[ROW_COLUMN].tolist()}: the same prompt appears more than "
            "once (pairing by prompt needs one response per prompt and epoch)"
        )
    return frame


def stored_ratings(
    responses: pd.DataFrame, questionnaire: Questionnaire, column: str = "likert_evaluation"
) -> pd.DataFrame:
    """Ratings recorded next to the responses, one column per trait id (list position order)."""
    if column not in responses.columns:
        raise TableError(f"responses have no {column!r} column to replay ratings from")
    parts = []
    for source, part in responses.groupby(SOURCE_COLUMN, sort=False):
        part = part.copy()
        part.attrs["source"] = source
        parts.append(ratings_by_position(part, column, questionnaire))
    return pd.concat(parts).loc[responses.index]


# --- generated dialogues (the generate stage's tables) ---------------------------------------

DIALOGUE_ID_COLUMN, PERSONA_COLUMN, CHECKPOINT_COLUMN = "dialogue_id", "persona_id", "checkpoint"
DEGENERATE_COLUMN, TURNS_COLUMN, WORDS_COLUMN = "degenerate", "n_turns", "patient_words"
GENERATED_COLUMNS: tuple[str, ...] = (
    DIALOGUE_ID_COLUMN, PERSONA_COLUMN, MODEL_COLUMN, CHECKPOINT_COLUMN, EPOCH_COLUMN, "seed",
    "sample_index", "dialogue", TURNS_COLUMN, WORDS_COLUMN, DEGENERATE_COLUMN,
)  # fmt: skip
"""Columns of the generated-dialogues contract every table must have (``prompt_id`` is
checked when present; ``protocol`` and ``doctor_script`` are carried along)."""
_INTEGER_COLUMNS = (EPOCH_COLUMN, "seed", "sample_index", TURNS_COLUMN, WORDS_COLUMN)


def read_generated(path: str | Path) -> pd.DataFrame:
    """One checkpoint's generated dialogues, checked against the contract, paired by persona.

    ``prompt_id`` is the persona id (the unit paired across epochs); ``degenerate`` is an
    empty string for a fine row, else its reason.
    """
    frame = read_table(path)
    source = frame.attrs["source"]
    missing = [column for column in GENERATED_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"{source}: missing columns {missing} (rule: generated-dialogues table)")
    if frame.empty:
        raise TableError(f"{source}: no rows (rule: a checkpoint's table has its dialogues)")
    for column in _INTEGER_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values != values.round()) | (values < 0)
        if bad.any():
            raise TableError(
                f"{source} rows {frame.loc[bad, ROW_COLUMN].tolist()[:10]}: {column} must be a "
                "non-negative integer"
            )
        frame[column] = values.astype(int)
    epochs = sorted(int(e) for e in frame[EPOCH_COLUMN].unique())
    if len(epochs) != 1:
        raise TableError(f"{source}: epochs {epochs} (rule: one table per checkpoint)")
    for column in (DIALOGUE_ID_COLUMN, PERSONA_COLUMN, MODEL_COLUMN, CHECKPOINT_COLUMN):
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            raise TableError(
                f"{source} rows {frame.loc[empty, ROW_COLUMN].tolist()[:10]}: {column} is empty"
            )
        frame[column] = frame[column].astype(str)
    repeated = frame[DIALOGUE_ID_COLUMN].duplicated(keep=False)
    if repeated.any():
        raise TableError(
            f"{source} rows {frame.loc[repeated, ROW_COLUMN].tolist()[:10]}: dialogue_id repeats "
            "(rule: dialogue ids are unique)"
        )
    if PROMPT_COLUMN in frame.columns:
        differ = frame[PROMPT_COLUMN].astype(str) != frame[PERSONA_COLUMN]
        if differ.any():
            raise TableError(
                f"{source} rows {frame.loc[differ, ROW_COLUMN].tolist()[:10]}: prompt_id differs "
                "from persona_id (rule: prompt_id = persona_id)"
            )
        frame = frame.drop(columns=[PROMPT_COLUMN])
    frame.insert(1, PROMPT_COLUMN, frame[PERSONA_COLUMN])
    frame.insert(2, SOURCE_COLUMN, source)
    frame["dialogue"] = frame["dialogue"].fillna("").astype(str)
    frame[DEGENERATE_COLUMN] = frame[DEGENERATE_COLUMN].fillna("").astype(str).str.strip()
    frame.attrs["source"] = source
    return frame


def combine_generated(tables: Sequence[pd.DataFrame], base_epoch: int = 0) -> pd.DataFrame:
    """The tables of one policy's checkpoints as one frame: one model, distinct epochs and
    dialogue ids, the base epoch present."""
    if not tables:
        raise ValueError("no generated-dialogues tables to evaluate")
    sources = [table.attrs.get("source", "<table>") for table in tables]
    seen: dict[int, str] = {}
    for table, source in zip(tables, sources, strict=True):
        epoch = int(table[EPOCH_COLUMN].iloc[0])
        if epoch in seen:
            raise TableError(f"{source}: epoch {epoch} also in {seen[epoch]}")
        seen[epoch] = source
    frame = pd.concat(tables, ignore_index=True)
    models = sorted(frame[MODEL_COLUMN].unique())
    if len(models) != 1:
        raise TableError(
            f"{sources}: models {models} (rule: one policy, the checkpoints of one base model)"
        )
    repeated = frame[frame[DIALOGUE_ID_COLUMN].duplicated(keep=False)]
    if not repeated.empty:
        where = sorted(set(zip(repeated[SOURCE_COLUMN], repeated[ROW_COLUMN], strict=True)))[:6]
        raise TableError(f"dialogue ids repeat across tables at {where} (rule: unique ids)")
    if base_epoch not in seen:
        raise TableError(f"{sources}: no table of the base epoch {base_epoch}; got {sorted(seen)}")
    return frame


def rated_rows(responses: pd.DataFrame) -> pd.Index:
    """Rows a judge rates: all but those the generator flagged degenerate."""
    if DEGENERATE_COLUMN not in responses.columns:
        return responses.index
    return responses.index[responses[DEGENERATE_COLUMN] == ""]


def checkpoint_of(responses: pd.DataFrame, epoch: int) -> str:
    """The ``checkpoint`` folder name of an epoch's generated dialogues."""
    names = sorted(responses.loc[responses[EPOCH_COLUMN] == epoch, CHECKPOINT_COLUMN].unique())
    if len(names) != 1:
        raise TableError(f"epoch {epoch}: checkpoints {names} (rule: one checkpoint per epoch)")
    return str(names[0])


# --- ratings ----------------------------------------------------------------------------------


def ratings_from_results(
    results: Sequence[RatingResult], trait_ids: Sequence[str], index: pd.Index
) -> tuple[pd.DataFrame, list[dict]]:
    """A judge's results as a ratings table aligned to ``index``; failures listed, not dropped.

    Rows of failed items hold NaN ratings; the failures list names each item, its reason and
    the kind of failure.
    """
    if len(results) != len(index):
        raise ValueError(f"judge returned {len(results)} results for {len(index)} dialogues")
    rows, failures = [], []
    for position, result in zip(index, results, strict=True):
        missing = (
            [] if result.ratings is None else [t for t in trait_ids if t not in result.ratings]
        )
        if not result.ok or missing:
            reason = result.error or f"missing ratings for {missing}"
            failures.append(
                {
                    "index": position,
                    "item_id": result.item_id,
                    "error": reason,
                    "error_kind": result.error_kind,
                }
            )
            rows.append(dict.fromkeys(trait_ids, np.nan))
        else:
            rows.append({t: float(result.ratings[t]) for t in trait_ids})
    return pd.DataFrame(rows, index=index, columns=list(trait_ids)), failures


@dataclass
class JudgedRatings:
    """A judge's ratings of some responses: one row per response (NaN where it failed), the
    failures with their reasons, and per row whether the judge called the dialogue out of its
    domain (None where the judge does not say)."""

    ratings: pd.DataFrame
    failures: list[dict]
    out_of_domain: pd.Series

    @property
    def unreadable(self) -> pd.Index:
        """Rows in which the judge found no rated speaker (kind ``input``): format failures."""
        return pd.Index([f["index"] for f in self.failures if f.get("error_kind") == "input"])


def replayed_ratings(responses: pd.DataFrame, questionnaire: Questionnaire) -> JudgedRatings:
    """The ratings recorded next to the responses (``likert_evaluation``), as judged ratings."""
    ratings = stored_ratings(responses, questionnaire)
    return JudgedRatings(ratings, [], pd.Series(None, index=responses.index, dtype=object))


def judged_ratings(run: RatingRun, trait_ids: Sequence[str], index: pd.Index) -> JudgedRatings:
    """A cached rating run (one result per row of ``index``, in order) as judged ratings.

    Reads ``out_of_domain`` from each result when the judge's results carry it.
    """
    results = [run.result_for_row(row) for row in range(len(run.keys))]
    ratings, failures = ratings_from_results(results, trait_ids, index)
    flags = [getattr(result, "out_of_domain", None) for result in results]
    return JudgedRatings(ratings, failures, pd.Series(flags, index=index, dtype=object))


def _sources(responses: pd.DataFrame) -> str:
    if SOURCE_COLUMN not in responses.columns:
        return "the responses"
    return ", ".join(sorted(responses[SOURCE_COLUMN].astype(str).unique()))


def _where(responses: pd.DataFrame, index: Sequence, shown: int = 3) -> str:
    """``file rows [..]`` of some responses (the first ``shown`` per file)."""
    part = responses.loc[list(index)]
    if SOURCE_COLUMN not in part.columns or ROW_COLUMN not in part.columns:
        return f"rows {list(index)[:shown]}"
    places = []
    for source, rows in part.groupby(SOURCE_COLUMN, sort=True)[ROW_COLUMN]:
        listed = rows.tolist()
        more = f" and {len(listed) - shown} more" if len(listed) > shown else ""
        places.append(f"{source} rows {listed[:shown]}{more}")
    return "; ".join(places)


def unrated_reasons(responses: pd.DataFrame, judged: JudgedRatings) -> list[str]:
    """Why the rows of ``responses`` have no rating: degenerate rows (never sent, by reason)
    and judge failures (by reason and kind), each with its count and where it is."""
    reasons = []
    if DEGENERATE_COLUMN in responses.columns:
        flagged = responses[responses[DEGENERATE_COLUMN].astype(str) != ""]
        for reason, part in flagged.groupby(DEGENERATE_COLUMN, sort=True):
            reasons.append(
                f"{len(part)} flagged degenerate {reason!r} by the generator, not sent to the "
                f"judge ({_where(responses, part.index)})"
            )
    failures: dict[tuple[str, str], list] = {}
    for failure in judged.failures:
        if failure["index"] in responses.index:
            kind = failure.get("error_kind") or "unknown"
            failures.setdefault((str(failure["error"]), kind), []).append(failure["index"])
    for (error, kind), index in sorted(failures.items(), key=lambda item: -len(item[1])):
        reasons.append(f"{len(index)} failed ({kind}): {error} ({_where(responses, index)})")
    return reasons


def require_ratings(
    responses: pd.DataFrame, judged: JudgedRatings, base_epoch: int, judge: str = "the judge"
) -> None:
    """Stop when nothing can be scored: no response got a full rating from ``judge``, or a
    model's base epoch got none (every epoch is compared with it). The error names the files
    and says why the rows went unrated."""
    rated = judged.ratings.index[judged.ratings.notna().all(axis=1).to_numpy()]
    if rated.empty:
        raise TableError(
            f"{_sources(responses)}: nothing could be rated by {judge}, 0 of {len(responses)} "
            "dialogues got ratings (rule: an evaluation needs at least one rated dialogue); "
            + "; ".join(unrated_reasons(responses, judged) or ["no rating was returned"])
        )
    for model, part in responses.groupby(MODEL_COLUMN, sort=True):
        base = part[part[EPOCH_COLUMN] == base_epoch]
        if not base.empty and base.index.intersection(rated).empty:
            raise TableError(
                f"{_sources(base)}: nothing of {model}'s base epoch {base_epoch} could be "
                f"rated by {judge}, 0 of {len(base)} dialogues got ratings (rule: every epoch "
                "is compared with a rated base); "
                + "; ".join(unrated_reasons(base, judged) or ["no rating was returned"])
            )


def score_table(
    responses: pd.DataFrame,
    ratings: pd.DataFrame,
    reward: HLReward,
    scale: tuple[int, int] = (1, 5),
) -> pd.DataFrame:
    """``model``, ``epoch``, ``prompt_id``, ``hl`` and the trait ratings, for rated rows only
    (scored by :func:`hal_core.scoring.hl_scores`, which checks every rating is on the scale)."""
    rated = ratings.index[ratings.notna().all(axis=1).to_numpy()]
    keep = [ROW_COLUMN, MODEL_COLUMN, EPOCH_COLUMN, PROMPT_COLUMN]
    scored = responses.loc[rated, keep].copy()
    table = ratings.loc[rated].copy()
    table.insert(0, ROW_COLUMN, responses.loc[rated, ROW_COLUMN])
    if SOURCE_COLUMN in responses.columns:
        sources = sorted(responses.loc[rated, SOURCE_COLUMN].astype(str).unique())
        table.attrs["source"] = "ratings of " + ", ".join(sources[:3])
    scored[HL_COLUMN] = hl_scores(table, reward, scale)[SCORE_HL_COLUMN]
    return pd.concat([scored, ratings.loc[rated]], axis=1)


def stored_score_check(
    responses: pd.DataFrame, scored: pd.DataFrame, column: str = "hal16_score"
) -> pd.DataFrame:
    """Per model and epoch: the mean of a score stored with the responses next to ours."""
    stored = responses.loc[scored.index, [MODEL_COLUMN, EPOCH_COLUMN, column]]
    table = stored.assign(hl=scored[HL_COLUMN], abs_diff=(scored[HL_COLUMN] - stored[column]).abs())
    return (
        table.groupby([MODEL_COLUMN, EPOCH_COLUMN])
        .agg(
            stored_mean=(column, "mean"), mean=(HL_COLUMN, "mean"), max_abs_diff=("abs_diff", "max")
        )
        .reset_index()
    )


def out_of_domain_fractions(
    judged: JudgedRatings, responses: pd.DataFrame
) -> dict[tuple[str, int], float]:
    """Per (model, epoch): the share of rows the judge called out of its domain, over the rows
    where it said either way; empty when the judge never says."""
    flags = judged.out_of_domain.dropna()
    if flags.empty:
        return {}
    keys = responses.loc[flags.index, [MODEL_COLUMN, EPOCH_COLUMN]]
    table = keys.assign(ood=flags.astype(bool).astype(float))
    grouped = table.groupby([MODEL_COLUMN, EPOCH_COLUMN])["ood"].mean()
    return {(str(m), int(e)): float(v) for (m, e), v in grouped.items()}


# --- statistics -------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std and the t-based two-sided confidence interval of the mean."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    mean = float(array.mean()) if n else float("nan")
    std = float(array.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        return mean, std, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


@dataclass(frozen=True)
class PairedTest:
    """One-sided paired t-test that an epoch scores higher than the base, paired by prompt."""

    n_pairs: int
    mean_diff: float
    t: float
    p: float


def paired_t_test(base: pd.Series, other: pd.Series) -> PairedTest:
    """Test ``other > base`` on the prompts both have (series indexed by prompt id).

    ``mean_diff`` is the mean paired difference once one prompt is shared; ``t`` and ``p``
    need two pairs (else NaN; identical differences also give NaN).
    """
    common = base.index.intersection(other.index)
    if len(common) == 0:
        return PairedTest(0, float("nan"), float("nan"), float("nan"))
    b, o = base.loc[common].to_numpy(float), other.loc[common].to_numpy(float)
    mean_diff = float(np.mean(o - b))
    if len(common) < 2:
        return PairedTest(1, mean_diff, float("nan"), float("nan"))
    result = stats.ttest_rel(o, b, alternative="greater")
    return PairedTest(len(common), mean_diff, float(result.statistic), float(result.pvalue))


def persona_means(scored: pd.DataFrame, trait_ids: Sequence[str]) -> pd.DataFrame:
    """One row per model, epoch and prompt: mean HL and ratings over its dialogues, and
    ``n_dialogues`` (the unit of pairing is the prompt, not the sample)."""
    keys = [MODEL_COLUMN, EPOCH_COLUMN, PROMPT_COLUMN]
    grouped = scored.groupby(keys, sort=True)
    means = grouped[[HL_COLUMN, *trait_ids]].mean()
    means.insert(0, "n_dialogues", grouped.size())
    return means.reset_index()


@dataclass
class EvaluationReport:
    """Per model and epoch: HL statistics, paired tests, trait shifts and the best epoch."""

    summary: pd.DataFrame
    shifts: pd.DataFrame
    best_epoch: dict[str, int]
    base_epoch: int
    confidence: float
    trait_ids: list[str] = field(default_factory=list)

    @property
    def gains(self) -> dict[str, float]:
        """Best epoch's mean paired HL difference to the base, per model (NaN when no prompt
        was rated at both)."""
        return {model: self.value(model, epoch, "gain") for model, epoch in self.best_epoch.items()}

    def value(self, model: str, epoch: int, column: str) -> float:
        """One summary cell, e.g. ``value(model, 3, "p")``; NaN when that epoch has no rated
        dialogue."""
        table = self.summary.set_index([MODEL_COLUMN, EPOCH_COLUMN])
        if (model, epoch) not in table.index:
            return float("nan")
        return float(table.at[(model, epoch), column])

    def candidate_epoch(self, model: str) -> int | None:
        """The trained epoch with the highest mean HL (earliest on ties); None when only the
        base was evaluated. The base never competes: it is what a policy is compared with."""
        part = self.summary[
            (self.summary[MODEL_COLUMN] == model) & (self.summary[EPOCH_COLUMN] != self.base_epoch)
        ]
        if part.empty:
            return None
        ordered = part.sort_values(["mean", EPOCH_COLUMN], ascending=[False, True])
        return int(ordered[EPOCH_COLUMN].iloc[0])

    def by_epoch(self, column: str) -> dict[str, dict[int, float]]:
        """``{model: {epoch: value}}`` of one summary column."""
        table: dict[str, dict[int, float]] = {}
        for model, epoch, value in self.summary[[MODEL_COLUMN, EPOCH_COLUMN, column]].itertuples(
            index=False
        ):
            table.setdefault(str(model), {})[int(epoch)] = float(value)
        return table


def summarize_epochs(
    scored: pd.DataFrame, base_epoch: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per model and epoch: n (prompts), mean, std, CI, gain (mean paired difference
    to the base), difference of means to the base and the one-sided paired t-test.

    ``scored`` holds one row per model, epoch and prompt (see :func:`persona_means`).
    """
    rows = []
    for model, part in scored.groupby(MODEL_COLUMN, sort=True):
        by_epoch = {e: g.set_index(PROMPT_COLUMN) for e, g in part.groupby(EPOCH_COLUMN)}
        if base_epoch not in by_epoch:
            raise ValueError(f"model {model!r} has no base epoch {base_epoch}: {sorted(by_epoch)}")
        base = by_epoch[base_epoch][HL_COLUMN]
        for epoch, group in sorted(by_epoch.items()):
            scores = group[HL_COLUMN]
            mean, std, low, high = mean_ci(scores.to_numpy(), confidence)
            test = (
                PairedTest(len(scores), 0.0, float("nan"), float("nan"))
                if epoch == base_epoch
                else paired_t_test(base, scores)
            )
            n_dialogues = group["n_dialogues"].sum() if "n_dialogues" in group else len(group)
            rows.append(
                {
                    MODEL_COLUMN: model,
                    EPOCH_COLUMN: int(epoch),
                    "n": len(scores),
                    "n_dialogues": int(n_dialogues),
                    "mean": mean,
                    "std": std,
                    "ci_low": low,
                    "ci_high": high,
                    "gain": test.mean_diff,
                    "diff_to_base": mean - float(base.mean()),
                    "n_pairs": test.n_pairs,
                    "t": test.t,
                    "p": test.p,
                }
            )
    return pd.DataFrame(rows)


def trait_shifts(
    scored: pd.DataFrame, trait_ids: Sequence[str], base_epoch: int = 0
) -> pd.DataFrame:
    """Mean Likert rating per trait id, base and epoch, and the shift between them."""
    means = scored.groupby([MODEL_COLUMN, EPOCH_COLUMN])[list(trait_ids)].mean()
    rows = []
    for (model, epoch), values in means.iterrows():
        base = means.loc[(model, base_epoch)]
        for trait_id in trait_ids:
            rows.append(
                {
                    MODEL_COLUMN: model,
                    EPOCH_COLUMN: int(epoch),
                    "trait_id": trait_id,
                    "base_mean": float(base[trait_id]),
                    "mean": float(values[trait_id]),
                    "shift": float(values[trait_id] - base[trait_id]),
                }
            )
    return pd.DataFrame(rows)


def best_epochs(summary: pd.DataFrame) -> dict[str, int]:
    """Per model, the epoch with the highest mean HL (the earliest on ties)."""
    ordered = summary.sort_values(
        [MODEL_COLUMN, "mean", EPOCH_COLUMN], ascending=[True, False, True]
    )
    return {model: int(part[EPOCH_COLUMN].iloc[0]) for model, part in ordered.groupby(MODEL_COLUMN)}


def evaluate_scores(
    scored: pd.DataFrame,
    trait_ids: Sequence[str],
    base_epoch: int = 0,
    confidence: float = 0.95,
) -> EvaluationReport:
    """Everything the evaluation reports, from a scored table (see :func:`score_table`).

    Several dialogues of one prompt at one epoch are averaged first (:func:`persona_means`).
    """
    means = persona_means(scored, trait_ids)
    summary = summarize_epochs(means, base_epoch, confidence)
    return EvaluationReport(
        summary=summary,
        shifts=trait_shifts(means, trait_ids, base_epoch),
        best_epoch=best_epochs(summary),
        base_epoch=base_epoch,
        confidence=confidence,
        trait_ids=list(trait_ids),
    )


def finite_or_none(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(payload: object) -> object:
    """``payload`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(payload, float | np.floating):
        return finite_or_none(float(payload))
    if isinstance(payload, np.integer):
        return int(payload)
    if isinstance(payload, Mapping):
        return {key: json_safe(value) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        return [json_safe(value) for value in payload]
    return payload


# --- guards against reward hacking -----------------------------------------------------------


class GuardThresholds(BaseModel):
    """Limits a trained epoch must respect, measured against the base on the same personas'
    generated dialogues (the patient's turns are the policy's words)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_words_per_turn_drift: float = Field(
        default=0.5,
        ge=0,
        description="Largest relative change of the mean patient words per turn vs the base "
        "(0.5: from half to one and a half times the base's).",
    )
    max_turns_drift: float = Field(
        default=0.5,
        ge=0,
        description="Largest relative change of the mean number of patient turns per "
        "dialogue vs the base.",
    )
    min_distinct_2_ratio: float = Field(
        default=0.8,
        ge=0,
        description="Smallest distinct-2 (distinct word bigrams / all bigrams of an epoch's "
        "patient turns, pooled over its dialogues) as a share of the base's: catches a "
        "collapse to one template.",
    )
    max_repeated_lines: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Largest share of patient turns that repeat an earlier patient turn of the "
        "same dialogue (case and spacing ignored).",
    )
    max_format_failures: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Largest share of an epoch's dialogues that the generator flagged "
        "degenerate or in which the judge found no rated speaker.",
    )


_WORDS = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def text_statistics(
    responses: pd.DataFrame, tags: SpeakerTags, unreadable: pd.Index | None = None
) -> pd.DataFrame:
    """Per model and epoch, what the guards compare.

    ``format_failures``: share of dialogues flagged degenerate or ``unreadable`` by the judge;
    ``words_per_turn`` and ``turns``: means over fine dialogues of the contract's
    ``patient_words``/``n_turns`` (dialogues with patient turns); ``distinct_2``: distinct
    word bigrams over all bigrams of the fine dialogues' patient turns; ``repeated_lines``:
    share of those turns that repeat an earlier turn of their dialogue.
    """
    unreadable = unreadable if unreadable is not None else pd.Index([])
    if DEGENERATE_COLUMN in responses.columns:
        degenerate = responses[DEGENERATE_COLUMN] != ""
    else:
        degenerate = pd.Series(False, index=responses.index)
    rows = []
    for (model, epoch), part in responses.groupby([MODEL_COLUMN, EPOCH_COLUMN], sort=True):
        bad = degenerate.loc[part.index]
        fine = part[~bad]
        failures = int(bad.sum()) + int(fine.index.isin(unreadable).sum())
        bigrams: list[tuple[str, str]] = []
        n_turns = repeated = 0
        for text in fine["dialogue"]:
            seen: set[str] = set()
            for turn in parse_dialogue(str(text), tags).rated_texts:
                words = _WORDS.findall(turn.lower())
                bigrams.extend(itertools.pairwise(words))
                line = " ".join(turn.lower().split())
                n_turns += 1
                repeated += line in seen
                seen.add(line)
        if TURNS_COLUMN in fine.columns and WORDS_COLUMN in fine.columns:
            counted = fine[fine[TURNS_COLUMN] > 0]
        else:
            counted = fine.iloc[0:0]
        nan = float("nan")
        rows.append(
            {
                MODEL_COLUMN: model,
                EPOCH_COLUMN: int(epoch),
                "n_dialogues": len(part),
                "n_degenerate": int(bad.sum()),
                "format_failures": failures / len(part),
                "words_per_turn": float((counted[WORDS_COLUMN] / counted[TURNS_COLUMN]).mean())
                if len(counted)
                else nan,
                "turns": float(counted[TURNS_COLUMN].mean()) if len(counted) else nan,
                "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else nan,
                "repeated_lines": repeated / n_turns if n_turns else nan,
            }
        )
    return pd.DataFrame(rows)


class GuardCheck(BaseModel):
    """One guard at one epoch: its value, its limit and whether it held."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: float | None = Field(description="None when it cannot be measured (see note).")
    threshold: float
    rule: Literal["<=", ">="]
    passed: bool
    description: str
    note: str = ""


class GuardReport(BaseModel):
    """Every guard of one model's epoch against its base."""

    model_config = ConfigDict(frozen=True)

    model: str
    epoch: int
    base_epoch: int
    checks: list[GuardCheck]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]


def _drift(value: float, base: float) -> tuple[float | None, str]:
    if not (math.isfinite(value) and math.isfinite(base)):
        return None, "not measurable: no fine dialogue with patient turns at this epoch or base"
    if base == 0:
        return None, "not measurable: the base's mean is 0"
    return abs(value / base - 1.0), ""


def _ratio(value: float, base: float) -> tuple[float | None, str]:
    if not (math.isfinite(value) and math.isfinite(base)):
        return None, "not measurable: no word bigram in the patient turns at this epoch or base"
    if base == 0:
        return None, "not measurable: the base's value is 0"
    return value / base, ""


def _level(value: float) -> tuple[float | None, str]:
    if not math.isfinite(value):
        return None, "not measurable: no patient turn in a fine dialogue"
    return value, ""


def check_guards(
    statistics: pd.DataFrame,
    model: str,
    epoch: int,
    base_epoch: int,
    thresholds: GuardThresholds,
) -> GuardReport:
    """The guards of ``epoch`` against ``base_epoch`` from :func:`text_statistics`.

    A guard that cannot be measured fails: a promotion needs every guard to hold.
    """
    table = statistics.set_index([MODEL_COLUMN, EPOCH_COLUMN])
    now, base = table.loc[(model, epoch)], table.loc[(model, base_epoch)]
    measured = {
        "max_words_per_turn_drift": _drift(now["words_per_turn"], base["words_per_turn"]),
        "max_turns_drift": _drift(now["turns"], base["turns"]),
        "min_distinct_2_ratio": _ratio(now["distinct_2"], base["distinct_2"]),
        "max_repeated_lines": _level(now["repeated_lines"]),
        "max_format_failures": _level(now["format_failures"]),
    }
    checks = []
    for name, (value, note) in measured.items():
        threshold = float(getattr(thresholds, name))
        rule = "<=" if name.startswith("max_") else ">="
        if value is None:
            passed = False
        else:
            passed = value <= threshold if rule == "<=" else value >= threshold
        checks.append(
            GuardCheck(
                name=name.removeprefix("max_").removeprefix("min_"),
                value=value,
                threshold=threshold,
                rule=rule,
                passed=passed,
                description=GuardThresholds.model_fields[name].description or "",
                note=note,
            )
        )
    return GuardReport(model=model, epoch=epoch, base_epoch=base_epoch, checks=checks)


# --- promotion --------------------------------------------------------------------------------


class PromotionDecision(BaseModel):
    """Whether a policy becomes the champion, and each rule's outcome in words."""

    model_config = ConfigDict(frozen=True)

    promote: bool
    reasons: list[str]


def decide_champion(
    gain: float | None,
    p_value: float | None,
    second_judge_gain: float | None,
    guards: GuardReport,
    *,
    has_second_judge: bool,
    significance: float = 0.05,
) -> PromotionDecision:
    """Promote only when all three hold: the HL gain under the training judge is positive and
    significant (one-sided paired p < ``significance``); the gain under the second judge is
    not negative; no guard fails. A value that cannot be computed does not hold."""
    reasons = []
    gain, p_value = finite_or_none(gain), finite_or_none(p_value)
    if gain is None or p_value is None:
        significant = False
        reasons.append(
            "training judge: the gain or its p-value cannot be computed (fewer than two "
            "personas rated at both epochs, or identical differences)"
        )
    else:
        significant = gain > 0 and p_value < significance
        verdict = "significant" if significant else "not significant"
        reasons.append(
            f"training judge: gain {gain:+.4f}, one-sided paired p = {p_value:.3g} "
            f"({verdict} at {significance:g})"
        )
    second_judge_gain = finite_or_none(second_judge_gain)
    if not has_second_judge:
        second_ok = False
        reasons.append("second judge: none configured (the rule needs one)")
    elif second_judge_gain is None:
        second_ok = False
        reasons.append("second judge: the gain cannot be computed (no persona rated at both)")
    else:
        second_ok = second_judge_gain >= 0
        reasons.append(
            f"second judge: gain {second_judge_gain:+.4f} "
            f"({'not negative' if second_ok else 'negative'})"
        )
    failed = [check for check in guards.checks if not check.passed]
    if not failed:
        reasons.append(f"guards: all {len(guards.checks)} hold")
    else:
        details = [
            f"{c.name} = {'not measurable' if c.value is None else f'{c.value:.4g}'} "
            f"(limit {c.rule} {c.threshold:g})"
            for c in failed
        ]
        reasons.append(f"guards: {len(failed)} failed: {'; '.join(details)}")
    return PromotionDecision(promote=significant and second_ok and not failed, reasons=reasons)


# --- before/after examples -------------------------------------------------------------------


class ExampleDialogue(BaseModel):
    """One rated dialogue shown as an example."""

    dialogue_id: str
    epoch: int
    hl: float
    dialogue: str


class BeforeAfter(BaseModel):
    """The same persona's dialogue before alignment and at a trained epoch."""

    label: str
    model: str
    persona_id: str
    gain: float
    before: ExampleDialogue
    after: ExampleDialogue


def _example(row: pd.Series, epoch: int) -> ExampleDialogue:
    identifier = row.get(DIALOGUE_ID_COLUMN)
    if not isinstance(identifier, str):
        identifier = f"{row[SOURCE_COLUMN]} row {row[ROW_COLUMN]}"
    return ExampleDialogue(
        dialogue_id=identifier, epoch=epoch, hl=float(row[HL_COLUMN]), dialogue=str(row["dialogue"])
    )


def pick_before_after(
    responses: pd.DataFrame, scored: pd.DataFrame, model: str, base_epoch: int, epoch: int
) -> list[BeforeAfter]:
    """One model's examples: a persona's first rated dialogue (lowest seed, sample, id) at the
    base and at ``epoch``, for the personas of median gain, of largest gain and of largest
    loss (each persona once; ties go to the smaller persona id). Deterministic."""
    order = [c for c in ("seed", "sample_index", DIALOGUE_ID_COLUMN) if c in responses.columns]
    rows = responses.loc[scored.index].assign(**{HL_COLUMN: scored[HL_COLUMN]})
    rows = rows[rows[MODEL_COLUMN] == model].sort_values([*order, ROW_COLUMN], kind="stable")
    first = {
        e: rows[rows[EPOCH_COLUMN] == e].drop_duplicates(PROMPT_COLUMN).set_index(PROMPT_COLUMN)
        for e in (base_epoch, epoch)
    }
    common = sorted(first[base_epoch].index.intersection(first[epoch].index))
    if not common:
        return []
    gains = pd.Series(
        [first[epoch].at[p, HL_COLUMN] - first[base_epoch].at[p, HL_COLUMN] for p in common],
        index=common,
        dtype=float,
    )
    ascending = gains.sort_values(kind="stable")
    descending = gains.sort_values(ascending=False, kind="stable")
    chosen = (
        ("typical (median gain)", ascending.index[(len(ascending) - 1) // 2]),
        ("largest gain", descending.index[0]),
        ("largest loss", ascending.index[0]),
    )
    picks: list[BeforeAfter] = []
    for label, persona in chosen:
        if any(item.persona_id == str(persona) for item in picks):
            continue
        picks.append(
            BeforeAfter(
                label=label,
                model=model,
                persona_id=str(persona),
                gain=float(gains[persona]),
                before=_example(first[base_epoch].loc[persona], base_epoch),
                after=_example(first[epoch].loc[persona], epoch),
            )
        )
    return picks


def before_after_examples(
    responses: pd.DataFrame, scored: pd.DataFrame, epochs: Mapping[str, int], base_epoch: int
) -> list[BeforeAfter]:
    """:func:`pick_before_after` for every model whose reported epoch is not the base."""
    return [
        example
        for model, epoch in sorted(epochs.items())
        if epoch != base_epoch
        for example in pick_before_after(responses, scored, model, base_epoch, epoch)
    ]


def before_after_markdown(examples: Sequence[BeforeAfter]) -> str:
    """The examples as Markdown: persona, HL before and after, both dialogues."""
    lines = ["# Before and after alignment", ""]
    if not examples:
        lines.append("No persona was rated at both epochs.")
    for item in examples:
        lines += [
            f"## {item.model}, persona {item.persona_id}: {item.label}",
            "",
            f"HL {item.before.hl:+.3f} (epoch {item.before.epoch}, `{item.before.dialogue_id}`)"
            f" -> {item.after.hl:+.3f} (epoch {item.after.epoch}, `{item.after.dialogue_id}`),"
            f" gain {item.gain:+.3f}.",
            "",
            f"### Before (epoch {item.before.epoch})",
            "",
            *markdown.fenced(item.before.dialogue),
            "",
            f"### After (epoch {item.after.epoch})",
            "",
            *markdown.fenced(item.after.dialogue),
            "",
        ]
    return "\n".join(lines)
