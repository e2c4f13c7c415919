"""DPO preference pairs from HL-scored candidates, as the HAL paper builds them.

Within each prompt, every two candidates whose HL scores differ by more than ``k·σ`` form one
pair: the higher-scored one is ``chosen``. ``σ`` is the standard deviation of all HL scores
(population, ``ddof=0``) and ``k = 0.5`` by default. Pairs are split into train and test by
prompt, so no prompt of the test split was seen in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.domain import OUT_OF_DOMAIN_COLUMN, both_out_of_domain

CANDIDATE_COLUMNS = ("prompt_id", "prompt", "candidate_id", "response", "hl")
"""The scored-candidates table: one row per candidate response, ``hl`` its HL score."""

PAIR_COLUMNS = (
    "pair_id",
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_id",
    "rejected_id",
    "chosen_score",
    "rejected_score",
    "delta",
)


class PreferenceError(ValueError):
    """A candidates table that cannot be paired; the message names the table, row and rule."""


class PairingConfig(BaseModel):
    """How candidates become pairs and how pairs are split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: float = Field(default=0.5, ge=0.0, description="Margin in units of σ of all HL scores.")
    test_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of prompts held out for the test split."
    )
    seed: int = Field(default=0, description="Seed of the prompt split.")
    histogram_bins: int = Field(default=10, ge=1, description="Bins of the delta histogram.")
    max_pairs_per_prompt: int | None = Field(
        default=None,
        ge=1,
        description="Keep a prompt's pairs with the largest HL differences, at most this many; "
        "None keeps all.",
    )
    drop_both_out_of_domain: bool = Field(
        default=False,
        description="Drop a pair when the judge flagged both of its dialogues out of domain.",
    )


@dataclass(frozen=True)
class PreferencePairs:
    """Pairs with the threshold that made them and the candidates that could not take part."""

    pairs: pd.DataFrame
    sigma: float
    threshold: float
    n_candidates: int
    n_prompts: int
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    n_dropped_out_of_domain: int = 0

    def stats(self, bins: int = 10) -> dict:
        """Counts, coverage and the histogram of score differences, for logging."""
        deltas = self.pairs["delta"].to_numpy(float)
        counts, edges = (
            np.histogram(deltas, bins=bins) if len(deltas) else (np.zeros(0), np.zeros(0))
        )
        per_prompt = self.pairs.groupby("prompt_id").size() if len(self.pairs) else pd.Series()
        return {
            "n_candidates": self.n_candidates,
            "n_excluded": len(self.excluded),
            "n_prompts": self.n_prompts,
            "n_pairs": len(self.pairs),
            "n_dropped_out_of_domain": self.n_dropped_out_of_domain,
            "prompts_covered": int(per_prompt.size),
            "prompts_covered_fraction": per_prompt.size / self.n_prompts if self.n_prompts else 0.0,
            "pairs_per_prompt_mean": float(per_prompt.mean()) if per_prompt.size else 0.0,
            "sigma": self.sigma,
            "threshold": self.threshold,
            "delta_mean": float(deltas.mean()) if len(deltas) else 0.0,
            "delta_min": float(deltas.min()) if len(deltas) else 0.0,
            "delta_max": float(deltas.max()) if len(deltas) else 0.0,
            "delta_histogram": {
                "counts": [int(c) for c in counts],
                "edges": [float(e) for e in edges],
            },
        }


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    source = frame.attrs.get("source", "<candidates>")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise PreferenceError(
            f"{source}: scored candidates lack columns {missing} (needs {list(columns)})"
        )


def _row_label(frame: pd.DataFrame, index: object) -> str:
    if "_row" in frame.columns:
        return f"row {frame.at[index, '_row']}"
    return f"index {index}"


def exclusions(candidates: pd.DataFrame) -> pd.DataFrame:
    """Candidates that cannot be paired, each with its reason (missing score, empty text, a
    ``degenerate`` flag of generated dialogues)."""
    reasons = pd.Series("", index=candidates.index, dtype=object)
    if "degenerate" in candidates.columns:
        flag = candidates["degenerate"].fillna("").astype(str).str.strip()
        reasons[flag != ""] = "degenerate: " + flag[flag != ""]
    scores = pd.to_numeric(candidates["hl"], errors="coerce")
    reasons[~np.isfinite(scores.to_numpy(float))] = "no HL score"
    empty = candidates["response"].fillna("").astype(str).str.strip() == ""
    reasons[empty] = (reasons[empty] + "; empty response").str.lstrip("; ")
    empty_prompt = candidates["prompt"].fillna("").astype(str).str.strip() == ""
    reasons[empty_prompt] = (reasons[empty_prompt] + "; empty prompt").str.lstrip("; ")
    excluded = candidates[reasons != ""].copy()
    excluded["reason"] = reasons[reasons != ""]
    return excluded


def _pair_id(prompt_id: object, chosen_id: object, rejected_id: object) -> str:
    key = f"{prompt_id}\x1f{chosen_id}\x1f{rejected_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_pairs(
    candidates: pd.DataFrame,
    k: float = 0.5,
    max_pairs_per_prompt: int | None = None,
    drop_both_out_of_domain: bool = False,
) -> PreferencePairs:
    """Pairs within a prompt whose HL difference exceeds ``k·σ``; chosen has the higher HL.

    ``σ`` is computed over every scored candidate. Candidates without a finite score, with an
    empty text or flagged degenerate are returned in ``excluded`` with their reason, never
    silently dropped. ``max_pairs_per_prompt`` keeps a prompt's largest differences;
    ``drop_both_out_of_domain`` drops pairs whose two candidates carry a true
    ``out_of_domain`` flag (counted in ``n_dropped_out_of_domain``).
    """
    _require_columns(candidates, CANDIDATE_COLUMNS)
    source = candidates.attrs.get("source", "<candidates>")
    duplicated = candidates["candidate_id"].duplicated(keep=False)
    if duplicated.any():
        first = candidates.index[duplicated][0]
        raise PreferenceError(
            f"{source} {_row_label(candidates, first)}: candidate_id "
            f"{candidates.at[first, 'candidate_id']!r} is not unique"
        )
    excluded = exclusions(candidates)
    usable = candidates.drop(index=excluded.index)
    scores = pd.to_numeric(usable["hl"]).to_numpy(float)
    sigma = float(np.std(scores)) if len(scores) else 0.0
    threshold = k * sigma
    rows, dropped_out_of_domain = [], 0
    for prompt_id, group in usable.groupby("prompt_id", sort=True):
        ordered = group.sort_values("candidate_id", kind="stable")
        records = ordered.to_dict("records")
        kept = []
        for first, second in combinations(records, 2):
            difference = float(first["hl"]) - float(second["hl"])
            if abs(difference) <= threshold:
                continue
            if (
                drop_both_out_of_domain
                and both_out_of_domain(
                    [first.get(OUT_OF_DOMAIN_COLUMN)], [second.get(OUT_OF_DOMAIN_COLUMN)]
                ).all()
            ):
                dropped_out_of_domain += 1
                continue
            kept.append((first, second, difference))
        if max_pairs_per_prompt is not None:
            kept = sorted(kept, key=lambda item: -abs(item[2]))[:max_pairs_per_prompt]
        for first, second, difference in kept:
            chosen, rejected = (first, second) if difference > 0 else (second, first)
            rows.append(
                {
                    "pair_id": _pair_id(
                        prompt_id, chosen["candidate_id"], rejected["candidate_id"]
                    ),
                    "prompt_id": prompt_id,
                    "prompt": str(chosen["prompt"]),
                    "chosen": str(chosen["response"]),
                    "rejected": str(rejected["response"]),
                    "chosen_id": chosen["candidate_id"],
                    "rejected_id": rejected["candidate_id"],
                    "chosen_score": float(chosen["hl"]),
                    "rejected_score": float(rejected["hl"]),
                    "delta": abs(difference),
                }
            )
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    return PreferencePairs(
        pairs=pairs,
        sigma=sigma,
        threshold=threshold,
        n_candidates=len(candidates),
        n_prompts=int(candidates["prompt_id"].nunique()),
        excluded=excluded,
        n_dropped_out_of_domain=dropped_out_of_domain,
    )


def split_by_prompt(
    pairs: pd.DataFrame, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``train`` and ``test`` pairs with disjoint prompts (at least one test prompt if asked)."""
    prompt_ids = np.array(sorted(pairs["prompt_id"].unique(), key=str), dtype=object)
    rng = np.random.default_rng(seed)
    shuffled = prompt_ids[rng.permutation(len(prompt_ids))]
    n_test = round(test_fraction * len(shuffled))
    if test_fraction > 0 and len(shuffled) > 1:
        n_test = min(max(n_test, 1), len(shuffled) - 1)
    test_ids = set(shuffled[:n_test].tolist())
    is_test = pairs["prompt_id"].isin(test_ids)
    return {
        "train": pairs[~is_test].reset_index(drop=True),
        "test": pairs[is_test].reset_index(drop=True),
    }


def to_dataset_dict(splits: dict[str, pd.DataFrame]):
    """A Hugging Face ``DatasetDict`` with ``prompt``/``chosen``/``rejected``, scores and ids.

    An empty split is left out: ``datasets`` saves one it cannot load back."""
    from datasets import Dataset, DatasetDict

    converted = {}
    for name, frame in splits.items():
        if frame.empty:
            continue
        table = frame[list(PAIR_COLUMNS)].copy()
        for column in ("prompt_id", "chosen_id", "rejected_id"):
            table[column] = table[column].astype(str)
        converted[name] = Dataset.from_pandas(table, preserve_index=False)
    return DatasetDict(converted)


Scorer = Callable[[pd.DataFrame], pd.DataFrame]
"""Scores candidates: returns ``hl`` (NaN when not scored) and ``score_error`` per row."""


def attach_scores(
    candidates: pd.DataFrame,
    scores: pd.DataFrame,
    id_column: str = "candidate_id",
    score_column: str = "hl",
) -> pd.DataFrame:
    """Candidates joined with a precomputed scores table by candidate id (unmatched: NaN)."""
    source = scores.attrs.get("source", "<scores>")
    missing = [c for c in (id_column, score_column) if c not in scores.columns]
    if missing:
        raise PreferenceError(f"{source}: scores table lacks columns {missing}")
    keyed = scores[[id_column, score_column]].copy()
    keyed[id_column] = keyed[id_column].astype(str)
    duplicated = keyed[id_column].duplicated(keep=False)
    if duplicated.any():
        first = keyed.index[duplicated][0]
        raise PreferenceError(
            f"{source} {_row_label(scores, first)}: {id_column} {keyed.at[first, id_column]!r} "
            "is not unique"
        )
    mapping = dict(zip(keyed[id_column], keyed[score_column], strict=True))
    scored = candidates.copy()
    scored["hl"] = candidates["candidate_id"].astype(str).map(mapping).astype(float)
    scored["score_error"] = [
        f"no score in {source}" if missing else None for missing in scored["hl"].isna()
    ]
    return scored
