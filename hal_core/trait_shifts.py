"""How each trait's rating moved from the base to an epoch, with a confidence interval: the
statistics behind the trait-shift forest plot and the report's trait table.

The unit is the persona, as in the HL test: several dialogues of a persona at one epoch are
averaged first, then each persona's rating at the epoch is paired with its rating at the base.
When every persona is rated at both epochs the mean paired shift equals the difference of the
epoch means (:func:`hal_core.evaluation.trait_shifts`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import pandas as pd

from hal_core.evaluation import EPOCH_COLUMN, MODEL_COLUMN, PROMPT_COLUMN, mean_ci, persona_means

INTERVAL_COLUMNS = (MODEL_COLUMN, EPOCH_COLUMN, "trait_id", "n_pairs", "shift", "ci_low", "ci_high")


def trait_shift_intervals(
    scored: pd.DataFrame, trait_ids: Sequence[str], base_epoch: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per model, trained epoch and trait id: the mean paired shift of the trait's
    rating (epoch minus base) over the personas rated at both, and its t-based CI (NaN with
    fewer than two pairs). ``scored`` holds one row per dialogue (see ``score_table``)."""
    means = persona_means(scored, trait_ids)
    rows = []
    for model, part in means.groupby(MODEL_COLUMN, sort=True):
        by_epoch = {int(e): g.set_index(PROMPT_COLUMN) for e, g in part.groupby(EPOCH_COLUMN)}
        if base_epoch not in by_epoch:
            raise ValueError(f"model {model!r} has no base epoch {base_epoch}: {sorted(by_epoch)}")
        base = by_epoch[base_epoch]
        for epoch, group in sorted(by_epoch.items()):
            if epoch == base_epoch:
                continue
            for trait_id in trait_ids:
                pairs = pd.concat([group[trait_id], base[trait_id]], axis=1, join="inner").dropna()
                differences = (pairs.iloc[:, 0] - pairs.iloc[:, 1]).to_numpy(float)
                shift, _, low, high = mean_ci(differences, confidence)
                rows.append(
                    {
                        MODEL_COLUMN: model,
                        EPOCH_COLUMN: epoch,
                        "trait_id": trait_id,
                        "n_pairs": len(differences),
                        "shift": shift,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))


def at_epochs(intervals: pd.DataFrame, epochs: Mapping[str, int]) -> pd.DataFrame:
    """The rows of each model at its reported epoch (``{model: epoch}``)."""
    chosen = intervals[MODEL_COLUMN].astype(str).map(dict(epochs)) == intervals[EPOCH_COLUMN]
    return intervals[chosen]


def trait_label(trait_id: str, text: str, width: int = 44) -> str:
    """``t05: the statement``, wrapped onto lines of at most ``width`` characters at spaces; a
    word is never cut (a word longer than ``width`` gets a line of its own)."""
    label = f"{trait_id}: {' '.join(text.split())}" if text.strip() else trait_id
    return textwrap.fill(label, width=width, break_long_words=False, break_on_hyphens=False)
