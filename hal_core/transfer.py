"""Honest validation of a local judge: how it rates dialogues of generators it never saw.

Grouped CV by prompt keeps every generator on both sides of a split, so it flatters a judge that
keys on one generator's surface habits. The figures here hold a whole source out:

* **leave-one-generator-out** (``logo.*``, the primary figure): ``aligned_outputs`` holds two
  generators (Llama-3.2-1B: 900 dialogues; Llama-3.3-70B: 600, each label the mean of five
  GPT-5 ratings). Train on one, test on the other, both directions; other domains (Turing
  witnesses) stay in training. HL Pearson r and same-prompt pair accuracy as
  :func:`hal_core.local_judge.hl_agreement` computes them; their means over the held-out
  generators are ``logo.hl.pearson`` and ``logo.hl.pair_accuracy``.
* **out-of-domain tests** (``test.<name>.*``): labelled sets from elsewhere, rated by a judge fitted
  on everything (e.g. ``synthlabs/candidates_train_scored16_gpt-5-mini.csv``: eight other LLMs,
  rated by GPT-5-mini, a different rater, so expect lower figures).
* **Turing by AI family** (``turing_family.*``): with Turing witnesses in training, each family
  (llama-405b, gpt-4.5, gpt-4o, eliza) is held out in turn; the judge's HL of each witness is
  compared with the HL of GPT-5's own ratings, and two pairwise checks run per game: does the
  human witness score higher (``human_vs_ai``) and does the witness the *interrogator* judged
  human score higher (``interrogator``: what people picked, the closest in-repo stand-in for
  people's preferences).

Every figure comes with the same figure for a one-line length heuristic (``baseline.length.*``:
shorter turns of the rated speaker read as more human), and every held-out dialogue with its
``domain_distance``, so the out-of-domain fraction of each split and how distance tracks the
judge's error (``ood_error_spearman``) are reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from hal_core.dialogue import SpeakerTags, parse_dialogue
from hal_core.domain import DomainConfig
from hal_core.features import WORD, FeatureMatrix
from hal_core.local_judge import (
    TURING,
    LabelledRows,
    RewardFactory,
    TrainingSet,
    TraitModels,
    TraitRegressorConfig,
    blas_threads,
    cross_val_reward_on_predicted_traits,
    hl_agreement,
    labelled_rows,
    stack_training,
    trait_spearman,
)
from hal_core.reward import HLReward, paired_accuracy

LENGTH_BASELINE = "length"


def length_scores(dialogues: Sequence[str], tags: SpeakerTags) -> np.ndarray:
    """The length heuristic: ``-log(1 + mean words per rated turn)`` (NaN when unparseable)."""
    scores = []
    for text in dialogues:
        parsed = parse_dialogue(str(text), tags)
        counts = [len(WORD.findall(turn)) for turn in parsed.rated_texts] if parsed.ok else []
        scores.append(-math.log1p(float(np.mean(counts))) if counts else float("nan"))
    return np.asarray(scores, dtype=float)


@dataclass
class HeldOutSet:
    """A labelled test set the judge is never fitted on; ``pair_column`` groups the dialogues
    whose order is checked (same prompt or persona)."""

    name: str
    training: TrainingSet
    matrix: FeatureMatrix
    pair_column: str


@dataclass
class TransferReport:
    """Held-out figures (metric name -> value) and one row per held-out dialogue."""

    metrics: dict[str, float]
    predictions: pd.DataFrame = field(repr=False)


def _trait_spearman_mean(predicted: pd.DataFrame, labels: pd.DataFrame) -> float:
    values = [v for v in trait_spearman(predicted, labels).values() if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _error_tracking(distance: np.ndarray, error: np.ndarray) -> float:
    if np.ptp(distance) == 0 or np.ptp(error) == 0:
        return float("nan")
    return float(stats.spearmanr(distance, error)[0])


def _hl_figures(
    prefix: str,
    models: TraitModels,
    rows: LabelledRows,
    reward: HLReward,
    recorded: np.ndarray,
    pairs: np.ndarray,
    lengths: np.ndarray,
) -> tuple[dict[str, float], pd.DataFrame]:
    """HL agreement, trait Spearman and out-of-domain figures of ``models`` on ``rows``."""
    predicted = pd.DataFrame(models.predict(rows.X), columns=rows.labels.columns)
    hl = reward.score(predicted)
    agreement = hl_agreement(hl, recorded, pairs)
    baseline = hl_agreement(lengths, recorded, pairs)
    distance = models.domain_distance(rows.X, str(rows.domains[0]) if len(rows) else None)
    per_trait = trait_spearman(predicted, rows.labels)
    metrics = {
        f"{prefix}.hl.pearson": agreement.pearson,
        f"{prefix}.hl.pair_accuracy": agreement.pair_accuracy,
        f"{prefix}.hl.n_pairs": float(agreement.n_pairs),
        **{f"{prefix}.spearman.{t}": v for t, v in per_trait.items() if np.isfinite(v)},
        f"{prefix}.spearman.mean": _trait_spearman_mean(predicted, rows.labels),
        f"{prefix}.n": float(len(rows)),
        f"baseline.{LENGTH_BASELINE}.{prefix}.hl.pearson": baseline.pearson,
        f"baseline.{LENGTH_BASELINE}.{prefix}.hl.pair_accuracy": baseline.pair_accuracy,
    }
    table = pd.DataFrame(
        {"split": prefix, "group": pairs, "hl_recorded": recorded, "hl": hl, "length": lengths}
    )
    if distance is not None:
        metrics[f"{prefix}.ood_fraction"] = float((distance > 1.0).mean())
        metrics[f"{prefix}.ood_error_spearman"] = _error_tracking(distance, np.abs(hl - recorded))
        table["domain_distance"] = distance
    return metrics, table


def _mean_over(metrics: dict[str, float], prefix: str, names: Sequence[str], suffix: str) -> float:
    values = [metrics[f"{prefix}.{name}.{suffix}"] for name in names]
    return float(np.nanmean(values)) if values else float("nan")


def _key(name: str) -> str:
    """A source name as a metric-name part (MLflow allows letters, digits, _ - . / and space)."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name))


def evaluate_generator_transfer(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    reward: HLReward,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
    tests: Sequence[HeldOutSet] = (),
    domain: DomainConfig | None = None,
    generator_column: str = "generator",
) -> TransferReport:
    """Leave-one-generator-out over ``training`` (doctor's visits with a ``generator`` column),
    the out-of-domain ``tests`` and, when Turing witnesses are among the ``extra`` domains,
    Turing by AI family (see the module doc). HL is ``reward`` of the predicted traits,
    compared with ``reward`` of the recorded ratings."""
    with blas_threads(config.blas_threads):
        return _evaluate_generator_transfer(
            training, matrix, config, reward, extra, tests, domain, generator_column
        )


def _evaluate_generator_transfer(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    reward: HLReward,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]],
    tests: Sequence[HeldOutSet],
    domain: DomainConfig | None,
    generator_column: str,
) -> TransferReport:
    trait_ids = training.questionnaire.trait_ids
    scale = training.questionnaire.scale
    rows = labelled_rows(training, matrix, config, trait_ids)
    frame = training.frame.reset_index(drop=True)[matrix.ok].reset_index(drop=True)
    if generator_column not in frame:
        raise ValueError(f"{training.domain} training rows have no {generator_column!r} column")
    generators = frame[generator_column].astype(str).to_numpy()
    names = sorted(set(generators))
    if len(names) < 2:
        raise ValueError(f"leave-one-generator-out needs two generators, found {names}")
    recorded = reward.score(rows.labels)
    pairs = frame[training.group_column].astype(str).to_numpy()
    lengths = length_scores(frame["dialogue"].tolist(), training.tags)
    others = stack_training(list(extra), config, trait_ids) if extra else None

    metrics: dict[str, float] = {}
    tables = []
    for held_out in names:
        fit_rows = rows.take(generators != held_out)
        if others is not None:
            fit_rows = fit_rows.concat(others)
        models = fit_rows.fit(config, scale, domain)
        test = generators == held_out
        found, table = _hl_figures(
            f"logo.{_key(held_out)}",
            models,
            rows.take(test),
            reward,
            recorded[test],
            pairs[test],
            lengths[test],
        )
        metrics.update(found)
        tables.append(table.assign(generator=held_out))
    keys = [_key(name) for name in names]
    per_trait = [f"spearman.{t}" for t in trait_ids]
    for suffix in ("hl.pearson", "hl.pair_accuracy", "spearman.mean", "ood_fraction", *per_trait):
        if all(f"logo.{key}.{suffix}" in metrics for key in keys):
            metrics[f"logo.{suffix}"] = _mean_over(metrics, "logo", keys, suffix)
        if suffix.startswith("hl."):
            base = f"baseline.{LENGTH_BASELINE}.logo"
            metrics[f"{base}.{suffix}"] = _mean_over(metrics, base, keys, suffix)

    everything = rows.concat(others) if others is not None else rows
    if tests:
        models = everything.fit(config, scale, domain)
        for test in tests:
            found, table = _test_figures(test, models, reward, trait_ids, config)
            metrics.update(found)
            tables.append(table)
    turing = [(t, m) for t, m in extra if t.domain == TURING and "family" in t.frame]
    if turing:
        found, table = _turing_by_family(rows, turing, config, reward, domain, others)
        metrics.update(found)
        tables.append(table)
    return TransferReport(metrics, pd.concat(tables, ignore_index=True))


def _test_figures(
    test: HeldOutSet,
    models: TraitModels,
    reward: HLReward,
    trait_ids: Sequence[str],
    config: TraitRegressorConfig,
) -> tuple[dict[str, float], pd.DataFrame]:
    rows = labelled_rows(test.training, test.matrix, config, trait_ids)
    frame = test.training.frame.reset_index(drop=True)[test.matrix.ok].reset_index(drop=True)
    lengths = length_scores(frame["dialogue"].tolist(), test.training.tags)
    prefix = f"test.{_key(test.name)}"
    metrics, table = _hl_figures(
        prefix,
        models,
        rows,
        reward,
        reward.score(rows.labels),
        frame[test.pair_column].astype(str).to_numpy(),
        lengths,
    )
    if {"is_human", "judged_human", "game_id"} <= set(frame.columns):
        metrics.update(_game_checks(prefix, table["hl"].to_numpy(), lengths, frame))
    metrics[f"{prefix}.n_unparseable"] = float(rows.n_unparseable)
    return metrics, table


def _game_checks(
    prefix: str, hl: np.ndarray, lengths: np.ndarray, frame: pd.DataFrame
) -> dict[str, float]:
    """Per game: does the human witness score higher, does the interrogator's pick."""
    games = frame["game_id"].to_numpy()
    out = {}
    for check, column in (("human_vs_ai", "is_human"), ("interrogator", "judged_human")):
        truth = frame[column].to_numpy(int)
        out[f"{prefix}.{check}"] = paired_accuracy(hl, truth, games)
        out[f"baseline.{LENGTH_BASELINE}.{prefix}.{check}"] = paired_accuracy(lengths, truth, games)
    return out


def _turing_by_family(
    doctor: LabelledRows,
    turing: Sequence[tuple[TrainingSet, FeatureMatrix]],
    config: TraitRegressorConfig,
    reward: HLReward,
    domain: DomainConfig | None,
    others: LabelledRows | None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Each AI family's games held out of a judge trained on everything else (both domains)."""
    trait_ids = list(doctor.labels.columns)
    metrics: dict[str, float] = {}
    tables = []
    for training, matrix in turing:
        rows = labelled_rows(training, matrix, config, trait_ids)
        frame = training.frame.reset_index(drop=True)[matrix.ok].reset_index(drop=True)
        families = frame["family"].astype(str).to_numpy()
        lengths = length_scores(frame["dialogue"].tolist(), training.tags)
        recorded = reward.score(rows.labels)
        games = frame["game_id"].astype(str).to_numpy()
        rest = _without(others, rows) if others is not None else None
        names = sorted(set(families))
        for family in names:
            held = families == family
            fit_rows = doctor.concat(rows.take(~held))
            if rest is not None:
                fit_rows = fit_rows.concat(rest)
            models = fit_rows.fit(config, training.questionnaire.scale, domain)
            prefix = f"turing_family.{_key(family)}"
            found, table = _hl_figures(
                prefix, models, rows.take(held), reward, recorded[held], games[held], lengths[held]
            )
            found.update(
                _game_checks(
                    prefix,
                    table["hl"].to_numpy(),
                    lengths[held],
                    frame[held].reset_index(drop=True),
                )
            )
            metrics.update(found)
            tables.append(table.assign(family=family))
        keys = [_key(name) for name in names]
        for suffix in ("hl.pearson", "spearman.mean", "human_vs_ai", "interrogator"):
            metrics[f"turing_family.{suffix}"] = _mean_over(metrics, "turing_family", keys, suffix)
            base = f"baseline.{LENGTH_BASELINE}.turing_family"
            if not suffix.startswith(("hl.", "spearman")):
                metrics[f"{base}.{suffix}"] = _mean_over(metrics, base, keys, suffix)
        metrics["turing_family.ood_fraction"] = _mean_over(
            metrics, "turing_family", keys, "ood_fraction"
        )
        for check, column in (("human_vs_ai", "is_human"), ("interrogator", "judged_human")):
            metrics[f"reference.llm_ratings.turing.{check}"] = paired_accuracy(
                recorded, frame[column].to_numpy(int), games
            )
    return metrics, pd.concat(tables, ignore_index=True)


def _without(stacked: LabelledRows, part: LabelledRows) -> LabelledRows | None:
    """``stacked`` less the rows of ``part``'s domain (they are handled family by family)."""
    domain = part.domains[0] if len(part) else None
    keep = stacked.domains != domain
    return stacked.take(keep) if keep.any() else None


def evaluate_family_transfer(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    domain: DomainConfig | None = None,
    reward_factory: RewardFactory | None = None,
    inner_splits: int = 5,
    seed: int = 0,
) -> TransferReport:
    """HAL32Q (Turing) judge: each AI family's games held out of the trait models *and* of the
    reward (fitted on inner cross-fitted predicted traits, as in game-grouped CV); pointwise
    and paired human-vs-AI accuracy, interrogator agreement, trait Spearman, against the same
    reward protocol on GPT-5's own ratings and the length heuristic."""
    with blas_threads(config.blas_threads):
        return _evaluate_family_transfer(
            training, matrix, config, domain, reward_factory, inner_splits, seed
        )


def _evaluate_family_transfer(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    domain: DomainConfig | None,
    reward_factory: RewardFactory | None,
    inner_splits: int,
    seed: int,
) -> TransferReport:
    from hal_core.local_judge import _paper_reward_estimator

    rows = labelled_rows(training, matrix, config)
    frame = training.frame.reset_index(drop=True)[matrix.ok].reset_index(drop=True)
    if "family" not in frame:
        raise ValueError("Turing witness rows have no 'family' column (ai_model missing?)")
    families = frame["family"].astype(str).to_numpy()
    games = frame["game_id"].astype(str).to_numpy()
    is_human = frame["is_human"].to_numpy(int)
    names = sorted(set(families))
    folds = [(np.flatnonzero(families != f), np.flatnonzero(families == f)) for f in names]
    result = cross_val_reward_on_predicted_traits(
        rows.X, rows.labels, is_human, games, rows.names, config,
        training.questionnaire.scale, inner_splits=inner_splits, seed=seed,
        reward_factory=reward_factory, folds=folds,
    )  # fmt: skip
    lengths = length_scores(frame["dialogue"].tolist(), training.tags)
    factory = reward_factory or _paper_reward_estimator
    llm_scores = np.full(len(frame), np.nan)
    distance = np.full(len(frame), np.nan)
    for (train, test), _family in zip(folds, names, strict=True):
        model = factory().fit(rows.labels.iloc[train].reset_index(drop=True), is_human[train])
        llm_scores[test] = model.decision_function(rows.labels.iloc[test].reset_index(drop=True))
        models = rows.take(train).fit(config, training.questionnaire.scale, domain)
        distance[test] = models.domain_distance(rows.X[test], training.domain)
    metrics: dict[str, float] = {}
    for family in names:
        held = families == family
        prefix = f"logo_family.{_key(family)}"
        scores, truth = result.scores[held], is_human[held]
        judged = frame["judged_human"].to_numpy(int)[held]
        metrics[f"{prefix}.reward.pointwise"] = float(((scores > 0).astype(int) == truth).mean())
        metrics[f"{prefix}.reward.paired"] = paired_accuracy(scores, truth, games[held])
        metrics[f"{prefix}.interrogator"] = paired_accuracy(scores, judged, games[held])
        metrics[f"{prefix}.spearman.mean"] = _trait_spearman_mean(
            result.trait_predictions[held], rows.labels[held]
        )
        metrics[f"{prefix}.ood_fraction"] = float((distance[held] > 1).mean())
        base = f"baseline.{LENGTH_BASELINE}.{prefix}"
        metrics[f"{base}.reward.paired"] = paired_accuracy(lengths[held], truth, games[held])
        metrics[f"{base}.interrogator"] = paired_accuracy(lengths[held], judged, games[held])
        ref = f"reference.llm_ratings.{prefix}"
        metrics[f"{ref}.reward.paired"] = paired_accuracy(llm_scores[held], truth, games[held])
        metrics[f"{ref}.interrogator"] = paired_accuracy(llm_scores[held], judged, games[held])
    keys = [_key(name) for name in names]
    for suffix in (
        "reward.pointwise", "reward.paired", "interrogator", "spearman.mean", "ood_fraction",
    ):  # fmt: skip
        metrics[f"logo_family.{suffix}"] = _mean_over(metrics, "logo_family", keys, suffix)
    for prefix in (f"baseline.{LENGTH_BASELINE}.logo_family", "reference.llm_ratings.logo_family"):
        for suffix in ("reward.paired", "interrogator"):
            metrics[f"{prefix}.{suffix}"] = _mean_over(metrics, prefix, keys, suffix)
    table = frame[["game_id", "witness", "is_human", "judged_human", "family"]].assign(
        hl=result.scores, hl_llm_ratings=llm_scores, length=lengths, domain_distance=distance
    )
    return TransferReport(metrics, table)
