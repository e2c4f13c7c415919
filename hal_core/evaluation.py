"""Evaluating aligned models: HL score per epoch, paired tests against the base, trait shifts.

The unit of evaluation is one generated dialogue per test prompt per training epoch. Epoch
``base_epoch`` (00) is the model before alignment; every other epoch is compared with it,
paired by prompt. Per-trait shifts of the mean Likert rating, base to epoch, show what
alignment changed besides the HL score (the paper's diagnosis of unintended effects).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from hal_core.judging import RatingResult
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.reward import HLReward
from hal_core.tables import ROW_COLUMN, TableError, ratings_by_position, read_table

PUBLISHED_HAL16Q_TRAIT_IDS: tuple[str, ...] = (
    "t01", "t05", "t10", "t03", "t04", "t17", "t07", "t20",
    "t08", "t16", "t26", "t02", "t11", "t18", "t22", "t29",
)  # fmt: skip
"""HAL32Q id of the statement at each position of the published HAL16Q judge prompt.

Each published statement rephrases one HAL32Q trait: its nearest neighbour by TF-IDF cosine
similarity (checked in tests) and by all-MiniLM-L6-v2 embeddings alike. Ratings stored in
published order (``aligned_outputs``) therefore carry these ids.
"""

EPOCH_FILE_PATTERN = re.compile(r"^samples_epoch_(\d+)_.*\.csv$")
MODEL_COLUMN, EPOCH_COLUMN, PROMPT_COLUMN, HL_COLUMN = "model", "epoch", "prompt_id", "hl"
SOURCE_COLUMN = "_source"
"""Path of the file a response came from, carried for error messages."""


# --- questionnaire and reward as published ---------------------------------------------------


def load_rating_questionnaire(path: str | Path) -> Questionnaire:
    """A questionnaire file: the project's JSON, or the published HAL16Q prompt statements."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if "statements_in_rating_order" not in payload:
        return Questionnaire.load(path)
    statements = payload["statements_in_rating_order"]
    positions = [item.get("position") for item in statements]
    if positions != list(range(1, len(PUBLISHED_HAL16Q_TRAIT_IDS) + 1)):
        raise ValueError(
            f"{path}: expected positions 1..{len(PUBLISHED_HAL16Q_TRAIT_IDS)} in order, "
            f"got {positions}"
        )
    traits = tuple(
        Trait(id=trait_id, text=item["text"], position=item["position"])
        for trait_id, item in zip(PUBLISHED_HAL16Q_TRAIT_IDS, statements, strict=True)
    )
    return Questionnaire(name=payload.get("name", path.stem), scale=payload["scale"], traits=traits)


def load_reward(path: str | Path, questionnaire: Questionnaire) -> HLReward:
    """A reward file: ``{weights: {id: w}, bias}``, or the paper's ``{w, b}``.

    The paper's ``w[k]`` is applied to the questionnaire's ``k``-th trait, as the published
    ``hal16_score`` was computed from ratings in published HAL16Q order.
    """
    path = Path(path)
    try:
        keys = json.loads(path.read_text(encoding="utf-8")).keys()
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if {"w", "b"} <= keys:
        return HLReward.from_paper_weights(path, trait_ids=questionnaire.trait_ids)
    return HLReward.load(path)


# --- generated responses ----------------------------------------------------------------------


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


def ratings_from_results(
    results: Sequence[RatingResult], trait_ids: Sequence[str], index: pd.Index
) -> tuple[pd.DataFrame, list[dict]]:
    """A judge's results as a ratings table aligned to ``index``; failures listed, not dropped.

    Rows of failed items hold NaN ratings; the failures list names each item and its reason.
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
            failures.append({"index": position, "item_id": result.item_id, "error": reason})
            rows.append(dict.fromkeys(trait_ids, np.nan))
        else:
            rows.append({t: float(result.ratings[t]) for t in trait_ids})
    return pd.DataFrame(rows, index=index, columns=list(trait_ids)), failures


def score_table(responses: pd.DataFrame, ratings: pd.DataFrame, reward: HLReward) -> pd.DataFrame:
    """``model``, ``epoch``, ``prompt_id``, ``hl`` and the trait ratings, for rated rows only."""
    rated = ratings.notna().all(axis=1)
    keep = [ROW_COLUMN, MODEL_COLUMN, EPOCH_COLUMN, PROMPT_COLUMN]
    scored = responses.loc[rated, keep].copy()
    scored[HL_COLUMN] = reward.score(ratings.loc[rated])
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
    """Test ``other > base`` on the prompts both have (series indexed by prompt id)."""
    common = base.index.intersection(other.index)
    if len(common) < 2:
        return PairedTest(len(common), float("nan"), float("nan"), float("nan"))
    b, o = base.loc[common].to_numpy(float), other.loc[common].to_numpy(float)
    result = stats.ttest_rel(o, b, alternative="greater")
    return PairedTest(
        len(common), float(np.mean(o - b)), float(result.statistic), float(result.pvalue)
    )


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
        """Best epoch's mean HL minus the base's, per model."""
        table = self.summary.set_index([MODEL_COLUMN, EPOCH_COLUMN])
        return {
            model: float(table.loc[(model, epoch), "diff_to_base"])
            for model, epoch in self.best_epoch.items()
        }


def summarize_epochs(
    scored: pd.DataFrame, base_epoch: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per model and epoch: n, mean, std, CI, difference to base and paired t-test."""
    rows = []
    for model, part in scored.groupby(MODEL_COLUMN, sort=True):
        by_epoch = {e: g.set_index(PROMPT_COLUMN)[HL_COLUMN] for e, g in part.groupby(EPOCH_COLUMN)}
        if base_epoch not in by_epoch:
            raise ValueError(f"model {model!r} has no base epoch {base_epoch}: {sorted(by_epoch)}")
        base = by_epoch[base_epoch]
        for epoch, scores in sorted(by_epoch.items()):
            mean, std, low, high = mean_ci(scores.to_numpy(), confidence)
            test = (
                PairedTest(len(scores), 0.0, float("nan"), float("nan"))
                if epoch == base_epoch
                else paired_t_test(base, scores)
            )
            rows.append(
                {
                    MODEL_COLUMN: model,
                    EPOCH_COLUMN: int(epoch),
                    "n": len(scores),
                    "mean": mean,
                    "std": std,
                    "ci_low": low,
                    "ci_high": high,
                    "diff_to_base": mean - float(base.mean()),
                    "n_pairs": test.n_pairs,
                    "paired_diff": test.mean_diff,
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
    """Everything the evaluation reports, from a scored table (see :func:`score_table`)."""
    summary = summarize_epochs(scored, base_epoch, confidence)
    return EvaluationReport(
        summary=summary,
        shifts=trait_shifts(scored, trait_ids, base_epoch),
        best_epoch=best_epochs(summary),
        base_epoch=base_epoch,
        confidence=confidence,
        trait_ids=list(trait_ids),
    )
