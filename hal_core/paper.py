"""What the HAL paper published, read once: its CV seeds, its weights and its HAL16Q prompt.

The published weights ``w`` (16) and bias ``b`` were fitted on HAL32Q ratings, ``w[k]`` on trait
``PAPER_WEIGHT_TRAIT_IDS[k]``. The published HAL16Q judge prompt lists sixteen HAL32Q statements
in another order (``HAL16Q_PUBLISHED_TRAIT_IDS``), and the stored ``hal16_score`` applies ``w[k]``
to published position ``k``: fourteen of sixteen positions pair a statement with a weight fitted
on another trait. Three readings of the weights follow, each keyed by HAL32Q trait id:

- ``fitted``: ``w[k]`` on the trait it was fitted on (the reward as fitted);
- ``paper_compatible``: ``w[k]`` on the statement at published position ``k`` (reproduces the
  stored ``hal16_score`` exactly);
- ``shared``: the fitted weights of the traits that the published prompt also asks about, so
  ratings from that prompt can be scored by trait id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hal_core.questionnaire import LikertScale, Questionnaire, Trait

PAPER_CV_SEEDS: tuple[int, ...] = (
    57, 14, 20, 10, 82, 89, 8, 23, 45, 19, 45, 95, 44, 64, 80, 30, 10, 8, 72, 95,
)  # fmt: skip
"""The 20 KFold seeds of the paper's notebook (duplicates included, as published)."""

PAPER_WEIGHT_TRAIT_IDS: tuple[str, ...] = (
    "t01", "t02", "t03", "t04", "t05", "t06", "t07", "t12",
    "t15", "t17", "t20", "t21", "t24", "t26", "t28", "t32",
)  # fmt: skip
"""HAL32Q id each published weight ``w[k]`` was fitted on (the notebook's feature indices)."""

HAL16Q_PUBLISHED_TRAIT_IDS: tuple[str, ...] = (
    "t01", "t05", "t10", "t03", "t04", "t17", "t07", "t20",
    "t08", "t16", "t26", "t02", "t11", "t18", "t22", "t29",
)  # fmt: skip
"""HAL32Q id of the statement at each position (1..16) of the published HAL16Q prompt: each
published statement rephrases that HAL32Q trait (its nearest neighbour by text; checked in
tests). Ratings stored in published order (``aligned_outputs``, ``*scored16*``) carry these ids."""

HAL16Q_ID = "hal16q"
WeightReading = Literal["fitted", "paper_compatible", "shared"]


@dataclass(frozen=True)
class PaperWeights:
    """The published ``{"w": [...], "b": ...}`` file."""

    w: tuple[float, ...]
    b: float
    source: str

    def weights(self, reading: WeightReading = "fitted") -> dict[str, float]:
        """Weights keyed by HAL32Q trait id under one of the three readings (module doc)."""
        fitted = dict(zip(PAPER_WEIGHT_TRAIT_IDS, self.w, strict=True))
        if reading == "fitted":
            return fitted
        if reading == "paper_compatible":
            return dict(zip(HAL16Q_PUBLISHED_TRAIT_IDS, self.w, strict=True))
        if reading == "shared":
            return {t: fitted[t] for t in HAL16Q_PUBLISHED_TRAIT_IDS if t in fitted}
        raise ValueError(f"unknown reading {reading!r}: fitted | paper_compatible | shared")


def is_paper_weights(payload: object) -> bool:
    """True for the published ``{"w": [...], "b": ...}`` layout."""
    return isinstance(payload, dict) and {"w", "b"} <= payload.keys()


def load_paper_weights(path: str | Path) -> PaperWeights:
    """The published weights, checked: 16 finite numbers and a finite bias."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON weights file ({error})") from error
    if not is_paper_weights(payload):
        raise ValueError(f"{path}: expected the published layout {{'w': [16 numbers], 'b': x}}")
    w, b = payload["w"], payload["b"]
    if not isinstance(w, list) or len(w) != len(PAPER_WEIGHT_TRAIT_IDS):
        raise ValueError(f"{path}: 'w' must be a list of {len(PAPER_WEIGHT_TRAIT_IDS)} numbers")
    values = []
    for index, value in enumerate([*w, b]):
        key = f"w[{index}]" if index < len(w) else "b"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: {key} = {value!r} is not a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{path}: {key} = {value!r} is not a finite number")
        values.append(float(value))
    return PaperWeights(w=tuple(values[:-1]), b=values[-1], source=str(path))


def load_hal16q_published(path: str | Path) -> Questionnaire:
    """The published HAL16Q statements in rating order, each under its HAL32Q trait id."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        statements = payload["statements_in_rating_order"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not the published HAL16Q layout ({error})") from error
    positions = [item.get("position") for item in statements]
    expected = list(range(1, len(HAL16Q_PUBLISHED_TRAIT_IDS) + 1))
    if positions != expected:
        raise ValueError(f"{path}: expected positions 1..{len(expected)} in order, got {positions}")
    traits = tuple(
        Trait(id=trait_id, text=item["text"], position=item["position"])
        for trait_id, item in zip(HAL16Q_PUBLISHED_TRAIT_IDS, statements, strict=True)
    )
    return Questionnaire(
        name=payload.get("name", "HAL16Q (as published)"),
        scale=LikertScale(**payload.get("scale", {})),
        traits=traits,
        id=HAL16Q_ID,
    )


def is_hal16q_published(path: str | Path) -> bool:
    """True when ``path`` holds the published prompt's statements (not a project questionnaire)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and "statements_in_rating_order" in payload
