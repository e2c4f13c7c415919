"""The local judge: one regressor per trait on dialogue features, trained on recorded LLM ratings.

An LLM judge needs ~40 s of API time per dialogue (GPT-5 median in the recorded data). The
local judge reads the rated speaker's turns (:mod:`hal_core.features`: pooled MiniLM turn
embeddings, word-piece means, style counts), predicts every trait of its questionnaire with its
own regressor (ridge by default; boosting as an option), clips to the Likert scale and, when a
reward is attached, adds the HL score. Ratings stay per trait, so the HL score stays
interpretable. Each rated dialogue also gets ``domain_distance`` / ``out_of_domain``
(:mod:`hal_core.domain`): how far it lies from the judge's training data.

Questionnaires:

* ``hal16q``: the 16 statements of the published HAL16Q judge prompt, each under the HAL32Q id
  it rephrases (:func:`hal_core.paper.load_hal16q_published`). Recorded ratings, stored by
  published position, become ratings keyed by those ids; HL is the stored ``hal16_score``
  (:func:`hal16q_reward`: ``w[k]`` on published position ``k``, the paper-compatible reading).
* ``hal32q``: ``questionnaires/hal32q.json`` as is (ids t01..t32).

Training data: ``aligned_outputs`` holds 600 Llama-3.3-70B dialogues rated five times under five
folder names and 900 Llama-3.2-1B dialogues rated once; :func:`average_ratings_by_dialogue`
averages the ratings of each distinct dialogue text and names its generator. Because the
HAL16Q ids are HAL32Q ids, the Turing witnesses' GPT-5 ratings of those sixteen traits can join
the doctor's visits (:func:`stack_training`): a judge trained on both domains. How well a judge
transfers to generators it never saw is measured in :mod:`hal_core.transfer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from threadpoolctl import threadpool_limits

from hal_core.dialogue import SpeakerTags
from hal_core.domain import (
    DOMAIN_DISTANCE_COLUMN,
    OUT_OF_DOMAIN_COLUMN,
    DomainConfig,
    DomainReference,
)
from hal_core.embedding import EMBEDDING_MODEL, EmbeddingCache
from hal_core.features import FEATURES_VERSION, DialogueFeaturizer, FeatureConfig, FeatureMatrix
from hal_core.folds import grouped_folds
from hal_core.judging import JudgeConfigurationError, RatingResult
from hal_core.paper import HAL16Q_ID as HAL16Q_ID
from hal_core.paper import load_paper_weights
from hal_core.questionnaire import LikertScale, Questionnaire
from hal_core.reward import HLReward, TraitLogisticRegression

FORMAT = "hal-local-judge/2"
METADATA_FILE = "local_judge.json"
MODELS_FILE = "regressors.joblib"
QUESTIONNAIRE_FILE = "questionnaire.json"
REWARD_FILE = "reward.json"
HAL32Q_ID = "hal32q"
DOCTOR_VISIT, TURING = "doctor_visit", "turing"
ALIGNED_OWN_OUTPUTS = ("Llama-3.2-1B-Instruct", "Llama-3.3-70B-Instruct")
"""``aligned_outputs`` folders that hold their own model's generations (the data README); the
other folders re-rate Llama-3.3-70B's dialogues."""
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 4, 16))


# ---------------------------------------------------------------------------------- reward


def hal16q_reward(weights_path: str | Path) -> HLReward:
    """``hal16_score`` as recorded: ``w[k]`` on the statement at published position ``k``
    (keyed by its HAL32Q id; the paper-compatible reading of :class:`hal_core.paper.PaperWeights`).
    """
    paper = load_paper_weights(weights_path)
    return HLReward(
        weights=paper.weights("paper_compatible"),
        bias=paper.b,
        metadata={
            "source": paper.source,
            "reading": "paper_compatible",
            "note": "published w[k] on published HAL16Q position k, as hal16_score was computed",
        },
    )


# ------------------------------------------------------------------------------ training data


def aligned_rating_rows(
    frames: Mapping[str, pd.DataFrame], questionnaire: Questionnaire
) -> pd.DataFrame:
    """One row per recorded rating of ``aligned_outputs``: dialogue, prompt, rater, trait ids.

    ``frames`` maps a file's path (relative to the data folder, ``<folder>/<file>.csv``) to its
    table; the folder becomes the ``rater`` (each folder is one independent GPT-5 rating).
    """
    from hal_core.tables import ROW_COLUMN, ratings_by_position

    parts = []
    for name, frame in frames.items():
        ratings = ratings_by_position(frame, "likert_evaluation", questionnaire)
        part = pd.DataFrame(
            {
                "dialogue": frame["dialogue"].astype(str).to_numpy(),
                "prompt": frame["prompt"].astype(str).to_numpy(),
                "rater": Path(name).parent.name or name,
                "source": name,
                ROW_COLUMN: frame[ROW_COLUMN].to_numpy() if ROW_COLUMN in frame else np.nan,
                "hal16_score": frame["hal16_score"].to_numpy(float),
                "elapsed_time": frame["elapsed_time"].to_numpy(float),
            }
        )
        parts.append(pd.concat([part, ratings.reset_index(drop=True)], axis=1))
    return pd.concat(parts, ignore_index=True)


def average_ratings_by_dialogue(rows: pd.DataFrame, trait_ids: Sequence[str]) -> pd.DataFrame:
    """Mean ratings per distinct dialogue text (first-seen order) with ``n_ratings``, the
    folders that rated it (``raters``) and the model that wrote it (``generator``)."""
    grouped = rows.groupby("dialogue", sort=False)
    means = grouped[[*trait_ids, "hal16_score"]].mean()
    raters = grouped["rater"].agg(lambda values: ",".join(sorted(set(values))))
    out = means.assign(
        prompt=grouped["prompt"].first(),
        n_ratings=grouped.size(),
        raters=raters,
        generator=[aligned_generator(names.split(",")) for names in raters],
    ).reset_index()
    prompts_per_text = grouped["prompt"].nunique()
    if (prompts_per_text > 1).any():
        bad = prompts_per_text[prompts_per_text > 1].index[0]
        raise ValueError(f"one dialogue text appears under several prompts: {bad[:80]!r}")
    return out


def aligned_generator(raters: Sequence[str]) -> str:
    """The model that wrote a dialogue of ``aligned_outputs``, from the folders that rated it.

    A folder of :data:`ALIGNED_OWN_OUTPUTS` holds its own model's outputs; the other folders
    re-rate Llama-3.3-70B's (data README). A dialogue is its own-output folder's, whichever
    other folders re-rated it; none or two such folders is an error (split by text, not folder).
    """
    own = sorted({name for name in raters if name in ALIGNED_OWN_OUTPUTS})
    if len(own) == 1:
        return own[0]
    if not own and raters:  # only re-rating folders: the shared Llama-3.3-70B dialogues
        return "Llama-3.3-70B-Instruct"
    raise ValueError(f"cannot tell the generator of a dialogue rated in folders {list(raters)}")


def turing_witness_rows(frame: pd.DataFrame, questionnaire: Questionnaire) -> pd.DataFrame:
    """One row per witness (game_id, witness, is_human, dialogue = its transcript, trait ids),
    with the game's AI ``family`` (``ai_model`` before its prompt suffix: ``gpt-4.5_quinn`` is
    ``gpt-4.5``) and ``judged_human`` (the interrogator picked this witness as the human)."""
    from hal_core.tables import witness_ratings

    witnesses = witness_ratings(frame, questionnaire)
    transcripts = {
        side: frame[f"conversation_{side}_transcript"].astype(str).to_numpy() for side in "AB"
    }
    dialogue = np.concatenate([transcripts["A"], transcripts["B"]])
    if (
        len(dialogue) != len(witnesses)
        or not (witnesses["witness"].to_numpy() == np.repeat(["A", "B"], len(frame))).all()
    ):
        raise ValueError("witness_ratings changed its row order (all A witnesses, then all B)")
    witnesses = witnesses.assign(dialogue=dialogue)
    if "ai_model" in frame:
        family = frame["ai_model"].astype(str).str.split("_").str[0].to_numpy()
        witnesses["family"] = np.concatenate([family, family])
    if "human_verdict" in frame:
        verdict = frame["human_verdict"].astype(str).to_numpy()
        witnesses["judged_human"] = (
            witnesses["witness"].to_numpy() == np.concatenate([verdict, verdict])
        ).astype(int)
    return witnesses


# ----------------------------------------------------------------------------- regressors


class TraitRegressorConfig(BaseModel):
    """How each trait's regressor is fitted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ridge", "hgb"] = Field(
        default="ridge",
        description="ridge: RidgeCV per trait (alpha by efficient leave-one-out); hgb: "
        "HistGradientBoostingRegressor per trait.",
    )
    alphas: tuple[float, ...] = Field(default=DEFAULT_ALPHAS, description="Ridge alpha grid.")
    block_weights: dict[str, float] = Field(
        default_factory=lambda: {"turn": 0.25, "emb": 0.2, "tok": 0.3, "style": 1.0},
        description="Multiplier of each standardised feature block (by name prefix): how much "
        "the ridge penalty lets each block speak. Chosen by leave-one-generator-out CV "
        "(hal_core.transfer): higher turn-embedding weights transferred worse.",
    )
    domain_weights: dict[str, float] = Field(
        default_factory=lambda: {TURING: 1.0},
        description="Sample weight of each training domain's dialogues (doctor_visit 1 unless "
        "named): how much the Turing witnesses count in a judge trained on both domains.",
    )
    sample_weight: Literal["none", "n_ratings"] = Field(
        default="none", description="Weigh a dialogue by how many ratings its label averages."
    )
    hgb_max_iter: int = Field(default=300, ge=1)
    hgb_learning_rate: float = Field(default=0.05, gt=0)
    hgb_max_leaf_nodes: int = Field(default=15, ge=2)
    seed: int = Field(default=0, description="Seed of every stochastic step (hgb only).")
    blas_threads: int | None = Field(
        default=1,
        description="BLAS threads while fitting (None: library default). One is the default: "
        "on a busy two-core machine two BLAS threads made a ridge fit 10-20x slower (measured).",
    )


@dataclass
class BlockScaler:
    """Clip each feature to its training range, standardise it, weigh it by its block.

    The clip keeps a linear model from extrapolating on text unlike anything it was trained
    on (a Spanish dialogue has an out-of-vocabulary rate 15 standard deviations above the
    training mean).
    """

    mean_: np.ndarray
    scale_: np.ndarray
    min_: np.ndarray
    max_: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, names: Sequence[str], weights: Mapping[str, float]) -> BlockScaler:
        std = X.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        block = block_weight_vector(names, weights)
        return cls(X.mean(axis=0), block / std, X.min(axis=0), X.max(axis=0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.clip(X, self.min_, self.max_) - self.mean_) * self.scale_


@dataclass
class LinearTrait:
    """One trait's ridge regressor (coefficients on scaled features, its own alpha)."""

    coef_: np.ndarray
    intercept_: float
    alpha_: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_ + self.intercept_


@dataclass
class ConstantTrait:
    """A trait whose training labels never vary: predict that value."""

    value_: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.value_)


@dataclass
class TraitModels:
    """Fitted regressors by trait id, sharing one feature scaler."""

    feature_names: list[str]
    scaler: BlockScaler
    regressors: dict[str, Any]
    scale_min: float
    scale_max: float
    domains: dict[str, DomainReference] = field(default_factory=dict)
    _stacked: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def trait_ids(self) -> list[str]:
        return list(self.regressors)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Clipped predictions, one column per trait id (in ``trait_ids`` order)."""
        Z = self.scaler.transform(np.asarray(X, dtype=np.float64))
        if all(isinstance(r, LinearTrait | ConstantTrait) for r in self.regressors.values()):
            if self._stacked is None:
                coef = np.column_stack(
                    [
                        r.coef_ if isinstance(r, LinearTrait) else np.zeros(Z.shape[1])
                        for r in self.regressors.values()
                    ]
                )
                bias = np.array(
                    [
                        r.intercept_ if isinstance(r, LinearTrait) else r.value_
                        for r in self.regressors.values()
                    ]
                )
                self._stacked = (coef, bias)
            coef, bias = self._stacked
            raw = Z @ coef + bias
        else:
            raw = np.column_stack([r.predict(Z) for r in self.regressors.values()])
        return np.clip(raw, self.scale_min, self.scale_max)

    def domain_distance(self, X: np.ndarray, domain: str | None = None) -> np.ndarray | None:
        """Distance of each row to the training data of ``domain`` (default: the first domain
        trained on), 1 at the in-domain quantile; None without a domain reference."""
        if not self.domains:
            return None
        reference = self.domains.get(domain) if domain else None
        reference = reference or next(iter(self.domains.values()))
        return reference.distance(np.asarray(X, dtype=np.float64))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stacked"] = None
        return state


def fit_trait_models(
    X: np.ndarray,
    Y: pd.DataFrame,
    feature_names: Sequence[str],
    config: TraitRegressorConfig,
    scale: LikertScale,
    sample_weight: np.ndarray | None = None,
) -> TraitModels:
    """One regressor per trait id column of ``Y``, on rows of ``X`` (all finite)."""
    with blas_threads(config.blas_threads):
        return _fit_trait_models(X, Y, feature_names, config, scale, sample_weight)


def block_weight_vector(names: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Each feature's block weight (block = the name's prefix before the first dot)."""
    return np.array([weights.get(name.split(".")[0], 1.0) for name in names], dtype=float)


def blas_threads(limit: int | None):
    """Limit BLAS/OpenMP threads of numpy/scipy/sklearn inside a ``with`` block."""
    if limit is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit)


def _fit_trait_models(
    X: np.ndarray,
    Y: pd.DataFrame,
    feature_names: Sequence[str],
    config: TraitRegressorConfig,
    scale: LikertScale,
    sample_weight: np.ndarray | None,
) -> TraitModels:
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise ValueError("feature rows must be finite (drop unparseable dialogues first)")
    scaler = BlockScaler.fit(X, feature_names, config.block_weights)
    Z = scaler.transform(X)
    targets = Y.to_numpy(dtype=np.float64)
    varying = [k for k in range(targets.shape[1]) if np.ptp(targets[:, k]) > 1e-12]
    regressors: dict[str, Any] = {
        trait_id: ConstantTrait(float(targets[0, k]))
        for k, trait_id in enumerate(Y.columns)
        if k not in varying
    }
    if varying and config.kind == "ridge":
        # alpha_per_target: one decomposition, then each trait's own leave-one-out-optimal
        # alpha; the same as fitting RidgeCV trait by trait.
        ridge = RidgeCV(alphas=config.alphas, alpha_per_target=True)
        ridge.fit(Z, targets[:, varying], sample_weight=sample_weight)
        alphas = np.atleast_1d(ridge.alpha_)
        for j, k in enumerate(varying):
            regressors[Y.columns[k]] = LinearTrait(
                np.array(ridge.coef_[j], dtype=np.float64),
                float(np.atleast_1d(ridge.intercept_)[j]),
                float(alphas[j] if alphas.size > 1 else alphas[0]),
            )
    elif varying:
        for k in varying:
            model = HistGradientBoostingRegressor(
                max_iter=config.hgb_max_iter,
                learning_rate=config.hgb_learning_rate,
                max_leaf_nodes=config.hgb_max_leaf_nodes,
                min_samples_leaf=20,
                l2_regularization=1.0,
                random_state=config.seed,
            )
            regressors[Y.columns[k]] = model.fit(Z, targets[:, k], sample_weight=sample_weight)
    ordered = {trait_id: regressors[trait_id] for trait_id in Y.columns}
    return TraitModels(list(feature_names), scaler, ordered, float(scale.min), float(scale.max))


# ------------------------------------------------------------------------------ the judge


class LocalJudge:
    """Rates dialogues on every trait of its questionnaire in milliseconds (Judge protocol)."""

    def __init__(
        self,
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        features: FeatureConfig,
        regressor: TraitRegressorConfig,
        models: TraitModels,
        reward: HLReward | None = None,
        training: Mapping[str, Any] | None = None,
        *,
        model_path: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if models.trait_ids != questionnaire.trait_ids:
            raise ValueError(
                f"regressors cover {models.trait_ids}, questionnaire {questionnaire.name} has "
                f"{questionnaire.trait_ids}"
            )
        self.questionnaire = questionnaire
        self.tags = tags
        self.features = features
        self.regressor = regressor
        self.models = models
        self.reward = reward
        self.training = dict(training or {})
        self.featurizer = DialogueFeaturizer(features, model_path=model_path, cache=cache)
        if self.featurizer.names != models.feature_names:
            raise ValueError("the feature configuration does not match the fitted regressors")

    # -- fitting
    @classmethod
    def fit(
        cls,
        rows: LabelledRows,
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        features: FeatureConfig,
        regressor: TraitRegressorConfig | None = None,
        domain: DomainConfig | None = None,
        training: Mapping[str, Any] | None = None,
        *,
        model_path: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> LocalJudge:
        """Fit on labelled feature rows (:func:`labelled_rows`, :func:`stack_training`), with
        the out-of-domain reference of those rows."""
        regressor = regressor or TraitRegressorConfig()
        if list(rows.labels.columns) != questionnaire.trait_ids:
            raise ValueError(
                f"labels cover {list(rows.labels.columns)}, questionnaire {questionnaire.name} "
                f"has {questionnaire.trait_ids}"
            )
        models = rows.fit(regressor, questionnaire.scale, domain)
        counts = pd.Series(rows.domains).value_counts().sort_index()
        info = {
            "n_train": len(rows),
            "n_unparseable": rows.n_unparseable,
            "domains": {str(name): int(n) for name, n in counts.items()},
            "domain_tags": {
                name: tags.model_dump(mode="json") for name, tags in rows.domain_tags.items()
            },
            "domain_config": (domain or DomainConfig()).model_dump(mode="json"),
            **(training or {}),
        }
        return cls(
            questionnaire,
            tags,
            features,
            regressor,
            models,
            None,
            info,
            model_path=model_path,
            cache=cache,
        )

    def with_reward(self, reward: HLReward | None) -> LocalJudge:
        """The same judge with ``reward`` attached (its traits must be this judge's)."""
        if reward is not None:
            missing = sorted(set(reward.trait_ids) - set(self.questionnaire.trait_ids))
            if missing:
                raise ValueError(f"reward needs traits {missing} that this judge does not rate")
        judge = LocalJudge(
            self.questionnaire,
            self.tags,
            self.features,
            self.regressor,
            self.models,
            reward,
            self.training,
            model_path=self.featurizer.model_path,
            cache=self.featurizer.cache,
        )
        return judge

    # -- predicting
    def domain_of(self, tags: SpeakerTags | None) -> str | None:
        """The training domain whose dialogues had these speaker tags (None: the first)."""
        for name, known in self.training.get("domain_tags", {}).items():
            if tags is not None and SpeakerTags(**known) == tags:
                return name
        return None

    def predict_matrix(
        self, matrix: FeatureMatrix, tags: SpeakerTags | None = None
    ) -> pd.DataFrame:
        """Trait-id columns (+ ``hl``), ``domain_distance``, ``out_of_domain`` and ``error``
        for feature rows (unrated rows: NaN, NA and the reason). The distance is to the
        training domain whose speaker ``tags`` the rows were parsed with (default: the first
        domain trained on)."""
        frame = pd.DataFrame(
            np.nan, index=range(len(matrix.errors)), columns=self.questionnaire.trait_ids
        )
        ok = matrix.ok
        if ok.any():
            frame.loc[ok, self.questionnaire.trait_ids] = self.models.predict(matrix.values[ok])
        if self.reward is not None:
            hl = np.full(len(frame), np.nan)
            if ok.any():
                hl[ok] = self.reward.score(frame.loc[ok, self.questionnaire.trait_ids])
            frame["hl"] = hl
        distance = np.full(len(frame), np.nan)
        if ok.any() and self.models.domains:
            found = self.models.domain_distance(matrix.values[ok], self.domain_of(tags))
            distance[ok] = found
        frame[DOMAIN_DISTANCE_COLUMN] = distance
        frame[OUT_OF_DOMAIN_COLUMN] = pd.array(
            [None if np.isnan(d) else bool(d > 1.0) for d in distance], dtype="boolean"
        )
        frame["error"] = pd.Series(matrix.errors, dtype=object).where(~ok, None)
        return frame

    def predict_frame(
        self, dialogues: Sequence[str], tags: SpeakerTags | None = None
    ) -> pd.DataFrame:
        """One row per dialogue: a column per trait id, ``hl`` with a reward, the
        out-of-domain columns and ``error``."""
        tags = tags or self.tags
        return self.predict_matrix(self.featurizer.transform(list(dialogues), tags), tags)

    def fingerprint(self) -> str:
        """Hash of the features' definition, the fitted regressors, questionnaire and reward."""
        payload = {
            "format": FORMAT,
            "features_version": FEATURES_VERSION,
            "features": self.features.model_dump(mode="json"),
            "regressor": self.regressor.model_dump(mode="json"),
            "questionnaire_version": self.questionnaire.version,
            "models_sha256": _models_digest(self.models),
            "reward_version": self.reward.version if self.reward else None,
            "embedding_model": EMBEDDING_MODEL,
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return "local-" + hashlib.sha256(blob).hexdigest()[:24]

    def rate(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None = None,
    ) -> list[RatingResult]:
        """One result per dialogue; unparseable dialogues fail with their reason (kind input)."""
        asked = self._check_questionnaire(questionnaire)
        ids = list(item_ids) if item_ids is not None else [_text_id(d) for d in dialogues]
        if len(ids) != len(dialogues):
            raise ValueError(f"{len(ids)} item ids for {len(dialogues)} dialogues")
        started = time.perf_counter()
        frame = self.predict_frame(dialogues, tags)
        share = (time.perf_counter() - started) / max(len(dialogues), 1)
        results = []
        for row, item_id in enumerate(ids):
            error = frame.at[row, "error"]
            if error is not None:
                results.append(
                    RatingResult(
                        item_id=item_id, error=str(error), error_kind="input", latency_s=share
                    )
                )
                continue
            ratings = {trait_id: float(frame.at[row, trait_id]) for trait_id in asked}
            distance = float(frame.at[row, DOMAIN_DISTANCE_COLUMN])
            results.append(
                RatingResult(
                    item_id=item_id,
                    ratings=ratings,
                    latency_s=share,
                    domain_distance=None if np.isnan(distance) else distance,
                    out_of_domain=None if np.isnan(distance) else bool(distance > 1.0),
                )
            )
        return results

    def _check_questionnaire(self, questionnaire: Questionnaire) -> list[str]:
        mine = self.questionnaire.texts()
        unknown = [t for t in questionnaire.trait_ids if t not in mine]
        differ = [
            t
            for t in questionnaire.trait_ids
            if t in mine and mine[t] != questionnaire.trait(t).text
        ]
        if unknown or differ:
            raise JudgeConfigurationError(
                f"local judge rates {self.questionnaire.name} (version "
                f"{self.questionnaire.version}); questionnaire {questionnaire.name} asks "
                f"unknown trait ids {unknown} and differently worded ids {differ}"
            )
        return questionnaire.trait_ids

    # -- persistence
    @property
    def questionnaire_id(self) -> str:
        """``hal16q``/``hal32q`` (or the questionnaire's own id, else its name)."""
        return str(
            self.training.get("questionnaire_id")
            or getattr(self.questionnaire, "id", None)
            or self.questionnaire.name
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "features_version": FEATURES_VERSION,
            "embedding_model": EMBEDDING_MODEL,
            "questionnaire_id": self.questionnaire_id,
            "questionnaire_name": self.questionnaire.name,
            "questionnaire_version": self.questionnaire.version,
            "trait_ids": self.questionnaire.trait_ids,
            "tags": self.tags.model_dump(mode="json"),
            "features": self.features.model_dump(mode="json"),
            "regressor": self.regressor.model_dump(mode="json"),
            "feature_names": self.models.feature_names,
            "alphas": {
                trait_id: getattr(model, "alpha_", None)
                for trait_id, model in self.models.regressors.items()
            },
            "reward_version": self.reward.version if self.reward else None,
            "models_sha256": _models_digest(self.models),
            "fingerprint": self.fingerprint(),
            "training": self.training,
        }

    def save(self, folder: str | Path) -> Path:
        """Write the judge to ``folder``: joblib regressors, JSON metadata, questionnaire."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.models, folder / MODELS_FILE)
        self.questionnaire.save(folder / QUESTIONNAIRE_FILE)
        reward_path = folder / REWARD_FILE
        if self.reward is not None:
            self.reward.save(reward_path)
        elif reward_path.exists():
            reward_path.unlink()
        text = json.dumps(self.metadata(), indent=2, default=str) + "\n"
        (folder / METADATA_FILE).write_text(text, encoding="utf-8")
        return folder

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        model_path: str | None = None,
        cache: EmbeddingCache | None = None,
        cache_path: str | Path | None = None,
    ) -> LocalJudge:
        """A judge saved by :meth:`save`; errors name the folder and what is wrong."""
        folder = Path(folder)
        meta_path = folder / METADATA_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise JudgeConfigurationError(f"{meta_path}: no local judge here") from error
        except json.JSONDecodeError as error:
            raise JudgeConfigurationError(f"{meta_path}: not valid JSON ({error})") from error
        if meta.get("format") != FORMAT:
            raise JudgeConfigurationError(
                f"{meta_path}: format {meta.get('format')!r}, this code reads {FORMAT!r}"
            )
        if meta.get("features_version") != FEATURES_VERSION:
            raise JudgeConfigurationError(
                f"{meta_path}: features {meta.get('features_version')!r}, this code computes "
                f"{FEATURES_VERSION!r}; retrain the local judge"
            )
        questionnaire = Questionnaire.load(folder / QUESTIONNAIRE_FILE)
        if questionnaire.version != meta["questionnaire_version"]:
            raise JudgeConfigurationError(
                f"{folder / QUESTIONNAIRE_FILE}: version {questionnaire.version} differs from "
                f"the metadata's {meta['questionnaire_version']}"
            )
        models = joblib.load(folder / MODELS_FILE)
        reward_path = folder / REWARD_FILE
        reward = HLReward.load(reward_path) if reward_path.exists() else None
        if cache is None and cache_path is not None:
            cache = EmbeddingCache(cache_path)
        return cls(
            questionnaire,
            SpeakerTags(**meta["tags"]),
            FeatureConfig(**meta["features"]),
            TraitRegressorConfig(**meta["regressor"]),
            models,
            reward,
            meta.get("training"),
            model_path=model_path,
            cache=cache,
        )

    @classmethod
    def from_path(cls, model_path: str | Path, **options: Any) -> LocalJudge:
        """The judge-registry hook (``backend: local``): options are :meth:`load`'s keywords."""
        return cls.load(model_path, **options)


def _models_digest(models: TraitModels) -> str:
    buffer = io.BytesIO()
    pickle.dump(models.__getstate__(), buffer, protocol=4)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _text_id(text: str) -> str:
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------ evaluation


def cross_val_traits(
    X: np.ndarray,
    Y: pd.DataFrame,
    groups: np.ndarray,
    feature_names: Sequence[str],
    config: TraitRegressorConfig,
    scale: LikertScale,
    n_splits: int,
    seed: int,
    sample_weight: np.ndarray | None = None,
    extra: LabelledRows | None = None,
) -> pd.DataFrame:
    """Out-of-fold clipped trait predictions (folds grouped by ``groups``); ``extra`` rows
    (another domain) join every fold's training rows and are never predicted."""
    predictions = pd.DataFrame(np.nan, index=Y.index, columns=Y.columns)
    for train, test in grouped_folds(groups, n_splits, seed):
        X_fit, Y_fit = X[train], Y.iloc[train]
        weights = None if sample_weight is None else sample_weight[train]
        if extra is not None:
            X_fit = np.vstack([X_fit, extra.X])
            Y_fit = pd.concat([Y_fit, extra.labels[list(Y.columns)]], ignore_index=True)
            base = weights if weights is not None else np.ones(len(train))
            weights = np.concatenate([base, extra.weights])
        models = fit_trait_models(X_fit, Y_fit, feature_names, config, scale, weights)
        predictions.iloc[test] = models.predict(X[test])
    return predictions


@dataclass(frozen=True)
class HLAgreement:
    pearson: float
    pair_accuracy: float
    n_pairs: int


def same_prompt_pairs(
    prompts: np.ndarray, reference: np.ndarray, min_difference: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of dialogues of one prompt whose reference differs by > min_difference."""
    left, right = [], []
    for indices in pd.Series(np.arange(len(prompts))).groupby(prompts).groups.values():
        for i, j in itertools.combinations(np.asarray(indices), 2):
            if abs(reference[i] - reference[j]) > min_difference:
                left.append(i)
                right.append(j)
    return np.asarray(left, dtype=int), np.asarray(right, dtype=int)


def hl_agreement(
    predicted: np.ndarray, recorded: np.ndarray, prompts: np.ndarray, min_difference: float = 1.0
) -> HLAgreement:
    """Pearson r and same-prompt pair-order accuracy (pairs whose recorded HL differs by > d)."""
    predicted = np.asarray(predicted, float)
    recorded = np.asarray(recorded, float)
    left, right = same_prompt_pairs(np.asarray(prompts), recorded, min_difference)
    agree = np.sign(predicted[left] - predicted[right]) == np.sign(recorded[left] - recorded[right])
    return HLAgreement(
        pearson=float(stats.pearsonr(predicted, recorded)[0]),
        pair_accuracy=float(agree.mean()) if len(left) else float("nan"),
        n_pairs=len(left),
    )


def retest_ceiling(
    rows: pd.DataFrame, score: str = "hal16_score", min_difference: float = 1.0
) -> dict[str, float]:
    """How well the LLM judge agrees with its own independent re-ratings of the same dialogues.

    Uses dialogues rated by every rater: mean Pearson r between two raters' scores, mean
    same-prompt pair-order accuracy of one rater's order judged by another, one rater against
    the mean of the others, and the mean absolute score difference between two ratings.
    """
    table = _retest_table(rows, score)
    raters = list(table.columns)
    if len(raters) < 2 or table.empty:
        return {"n_dialogues": 0.0}
    prompts = rows.groupby("dialogue")["prompt"].first().loc[table.index].to_numpy()
    rs, pair_accuracies, one_vs_rest, gaps = [], [], [], []
    for a, b in itertools.combinations(raters, 2):
        rs.append(stats.pearsonr(table[a], table[b])[0])
        gaps.append(float((table[a] - table[b]).abs().mean()))
    for a, b in itertools.permutations(raters, 2):
        pair_accuracies.append(
            hl_agreement(
                table[b].to_numpy(), table[a].to_numpy(), prompts, min_difference
            ).pair_accuracy
        )
    for a in raters:
        rest = table[[r for r in raters if r != a]].mean(axis=1)
        one_vs_rest.append(stats.pearsonr(table[a], rest)[0])
    return {
        "n_dialogues": float(len(table)),
        "n_raters": float(len(raters)),
        "pearson": float(np.mean(rs)),
        "pair_accuracy": float(np.mean(pair_accuracies)),
        "pearson_one_vs_mean_of_rest": float(np.mean(one_vs_rest)),
        "mean_abs_difference": float(np.mean(gaps)),
    }


def trait_retest_spearman(rows: pd.DataFrame, trait_ids: Sequence[str]) -> dict[str, float]:
    """Per trait: mean Spearman rho between two independent ratings of the same dialogues."""
    out = {}
    for trait_id in trait_ids:
        table = _retest_table(rows, trait_id)
        values = [
            _spearman(table[a].to_numpy(), table[b].to_numpy())
            for a, b in itertools.combinations(table.columns, 2)
        ]
        finite = [v for v in values if np.isfinite(v)]
        out[trait_id] = float(np.mean(finite)) if finite else float("nan")
    return out


def _retest_table(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Dialogue x rater table of ``value`` for the dialogues rated more than once, restricted
    to the raters who rated every one of them (the five re-rating folders)."""
    table = rows.pivot_table(index="dialogue", columns="rater", values=value, aggfunc="mean")
    table = table[table.notna().sum(axis=1) >= 2]
    return table[[rater for rater in table.columns if table[rater].notna().all()]]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b)[0])


def trait_spearman(predicted: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Spearman rho per trait id (NaN where the labels or predictions are constant)."""
    return {
        trait_id: _spearman(predicted[trait_id].to_numpy(float), labels[trait_id].to_numpy(float))
        for trait_id in labels.columns
    }


def near_constant_traits(ratings: pd.DataFrame, threshold: float = 0.9) -> dict[str, float]:
    """Traits whose most common (rounded) rating covers at least ``threshold`` of the rows."""
    shares = {}
    for trait_id in ratings.columns:
        share = float(ratings[trait_id].round().value_counts(normalize=True).iloc[0])
        if share >= threshold:
            shares[trait_id] = share
    return shares


RewardFactory = Callable[[], TraitLogisticRegression]


def _paper_reward_estimator() -> TraitLogisticRegression:
    """The reward estimator of the paper's protocol (the default ``RewardFactory``)."""
    return TraitLogisticRegression(C=1.0, selection_threshold=0.2)


@dataclass(frozen=True)
class RewardCV:
    """Human-vs-AI accuracy of a reward on predicted traits, both fitted inside the folds."""

    scores: np.ndarray
    trait_predictions: pd.DataFrame
    pointwise: float
    paired: float
    selected: list[list[str]]


def cross_val_reward_on_predicted_traits(
    X: np.ndarray,
    Y: pd.DataFrame,
    is_human: np.ndarray,
    games: np.ndarray,
    feature_names: Sequence[str],
    config: TraitRegressorConfig,
    scale: LikertScale,
    n_splits: int = 10,
    inner_splits: int = 5,
    seed: int = 0,
    reward_factory: RewardFactory | None = None,
    folds: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> RewardCV:
    """Game-grouped CV: per outer fold, fit the trait models on the training games, fit the
    reward on their *cross-fitted* (inner, game-grouped) trait predictions, and score the test
    games' predicted traits. Nothing of a test game is seen by either model. ``folds`` replaces
    the outer game-grouped folds (e.g. one per AI family); rows in no test fold stay NaN.
    """
    from hal_core.reward import paired_accuracy

    factory = reward_factory or _paper_reward_estimator
    is_human = np.asarray(is_human, int)
    scores = np.full(len(Y), np.nan)
    predictions = pd.DataFrame(np.nan, index=Y.index, columns=Y.columns)
    selected = []
    for train, test in folds if folds is not None else grouped_folds(games, n_splits, seed):
        models = fit_trait_models(X[train], Y.iloc[train], feature_names, config, scale)
        inner = cross_val_traits(
            X[train], Y.iloc[train], games[train], feature_names, config, scale,
            inner_splits, seed + 1,
        )  # fmt: skip
        reward = factory().fit(inner.reset_index(drop=True), is_human[train])
        predicted = pd.DataFrame(models.predict(X[test]), columns=Y.columns)
        predictions.iloc[test] = predicted.to_numpy()
        scores[test] = reward.decision_function(predicted)
        selected.append(list(getattr(reward, "selected_trait_ids_", [])))
    tested = ~np.isnan(scores)
    return RewardCV(
        scores=scores,
        trait_predictions=predictions,
        pointwise=float(((scores[tested] > 0).astype(int) == is_human[tested]).mean()),
        paired=paired_accuracy(scores[tested], is_human[tested], games[tested]),
        selected=selected,
    )


def fit_reward_on_predicted_traits(
    oof_predictions: pd.DataFrame, is_human: np.ndarray, reward_factory: RewardFactory | None = None
) -> HLReward:
    """The reward for a judge: fitted on out-of-fold predicted traits of every witness."""
    factory = reward_factory or _paper_reward_estimator
    fitted = factory().fit(oof_predictions.reset_index(drop=True), np.asarray(is_human, int))
    return fitted.to_reward(fitted_on="out-of-fold predicted traits of the local judge")


# ---------------------------------------------------------------------- training + evaluation


@dataclass
class TrainingSet:
    """Labelled dialogues for one questionnaire, with the column that groups CV folds."""

    questionnaire_id: str
    questionnaire: Questionnaire
    tags: SpeakerTags
    frame: pd.DataFrame
    group_column: str
    rating_rows: pd.DataFrame | None = None
    reward: HLReward | None = None
    domain: str = DOCTOR_VISIT

    @property
    def dialogues(self) -> list[str]:
        return self.frame["dialogue"].astype(str).tolist()

    @property
    def labels(self) -> pd.DataFrame:
        return self.frame[self.questionnaire.trait_ids].reset_index(drop=True)

    @property
    def groups(self) -> np.ndarray:
        return self.frame[self.group_column].astype(str).to_numpy()


@dataclass(frozen=True)
class LabelledRows:
    """Parseable, featurized, labelled dialogues of one or more domains, ready to fit."""

    X: np.ndarray
    labels: pd.DataFrame
    groups: np.ndarray
    domains: np.ndarray
    names: list[str]
    weights: np.ndarray
    n_unparseable: int
    domain_tags: dict[str, SpeakerTags] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.X)

    def take(self, rows: np.ndarray) -> LabelledRows:
        """The rows selected by a boolean mask or an index array."""
        rows = np.asarray(rows)
        index = np.flatnonzero(rows) if rows.dtype == bool else rows
        return replace(
            self,
            X=self.X[index],
            labels=self.labels.iloc[index].reset_index(drop=True),
            groups=self.groups[index],
            domains=self.domains[index],
            weights=self.weights[index],
        )

    def select_columns(self, columns: Sequence[int]) -> LabelledRows:
        """The same rows with only the feature columns ``columns``."""
        return replace(self, X=self.X[:, columns], names=[self.names[i] for i in columns])

    def concat(self, other: LabelledRows) -> LabelledRows:
        if other.names != self.names:
            raise ValueError("cannot stack feature rows with different feature names")
        if list(other.labels.columns) != list(self.labels.columns):
            raise ValueError("cannot stack labels of different trait ids")
        return LabelledRows(
            X=np.vstack([self.X, other.X]),
            labels=pd.concat([self.labels, other.labels], ignore_index=True),
            groups=np.concatenate([self.groups, other.groups]),
            domains=np.concatenate([self.domains, other.domains]),
            names=self.names,
            weights=np.concatenate([self.weights, other.weights]),
            n_unparseable=self.n_unparseable + other.n_unparseable,
            domain_tags={**self.domain_tags, **other.domain_tags},
        )

    def fit(
        self,
        config: TraitRegressorConfig,
        scale: LikertScale,
        domain: DomainConfig | None = None,
        with_domain: bool = True,
    ) -> TraitModels:
        """Trait models on these rows, with one out-of-domain reference per domain (in order
        of appearance) unless told not to."""
        models = fit_trait_models(
            self.X,
            self.labels,
            self.names,
            config,
            scale,
            self.weights if np.ptp(self.weights) > 0 else None,
        )
        if with_domain:
            weights = block_weight_vector(self.names, config.block_weights)
            for name in dict.fromkeys(self.domains):
                rows = self.domains == name
                models.domains[str(name)] = DomainReference.fit(
                    self.X[rows], self.groups[rows], domain, weights
                )
        return models


def labelled_rows(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    trait_ids: Sequence[str] | None = None,
) -> LabelledRows:
    """The parseable rows of ``training`` with their labels on ``trait_ids`` (default: the
    training set's questionnaire), groups (domain-prefixed, so a prompt never matches a game)
    and sample weights (``config.domain_weights`` x ``n_ratings`` when asked)."""
    ids = list(trait_ids or training.questionnaire.trait_ids)
    missing = [t for t in ids if t not in training.frame.columns]
    if missing:
        raise ValueError(
            f"{training.domain} ratings ({training.questionnaire.name}) lack trait ids {missing}"
        )
    ok = matrix.ok
    if len(ok) != len(training.frame):
        raise ValueError(f"{len(ok)} feature rows for {len(training.frame)} dialogues")
    frame = training.frame.reset_index(drop=True)[ok].reset_index(drop=True)
    weights = np.full(len(frame), float(config.domain_weights.get(training.domain, 1.0)))
    if config.sample_weight == "n_ratings" and "n_ratings" in frame:
        weights = weights * frame["n_ratings"].to_numpy(float)
    return LabelledRows(
        X=matrix.values[ok],
        labels=frame[ids].astype(float).reset_index(drop=True),
        groups=(training.domain + ":" + frame[training.group_column].astype(str)).to_numpy(),
        domains=np.full(len(frame), training.domain, dtype=object),
        names=list(matrix.names),
        weights=weights,
        n_unparseable=int((~ok).sum()),
        domain_tags={training.domain: training.tags},
    )


def stack_training(
    parts: Sequence[tuple[TrainingSet, FeatureMatrix]],
    config: TraitRegressorConfig,
    trait_ids: Sequence[str],
) -> LabelledRows:
    """Several domains' labelled rows on the same trait ids (e.g. doctor's visits + Turing
    witnesses on the sixteen HAL16Q ids) as one training set."""
    if not parts:
        raise ValueError("no training data")
    stacked = labelled_rows(*parts[0], config, trait_ids)
    for training, matrix in parts[1:]:
        stacked = stacked.concat(labelled_rows(training, matrix, config, trait_ids))
    return stacked


@dataclass
class LocalJudgeReport:
    """Cross-validated figures of a local judge and the tables behind them."""

    metrics: dict[str, float]
    per_trait: pd.DataFrame
    out_of_fold: pd.DataFrame
    reward: HLReward | None = None


def style_columns(names: Sequence[str]) -> list[int]:
    return [i for i, name in enumerate(names) if name.startswith("style.")]


@dataclass(frozen=True)
class _FeaturizedRows:
    """The training rows whose dialogues could be featurized, with their feature rows."""

    frame: pd.DataFrame
    labels: pd.DataFrame
    X: np.ndarray
    names: list[str]
    groups: np.ndarray
    n_unparseable: int

    @classmethod
    def select(cls, training: TrainingSet, matrix: FeatureMatrix) -> _FeaturizedRows:
        ok = matrix.ok
        frame = training.frame.reset_index(drop=True)[ok].reset_index(drop=True)
        return cls(
            frame=frame,
            labels=frame[training.questionnaire.trait_ids],
            X=matrix.values[ok],
            names=matrix.names,
            groups=frame[training.group_column].astype(str).to_numpy(),
            n_unparseable=int((~ok).sum()),
        )

    def style_only(self) -> _FeaturizedRows:
        """The same rows with only the style features."""
        columns = style_columns(self.names)
        return replace(self, X=self.X[:, columns], names=[self.names[i] for i in columns])

    def size_metrics(self, n_splits: int) -> dict[str, float]:
        return {
            "n_train": float(len(self.frame)),
            "n_unparseable": float(self.n_unparseable),
            "cv.folds": float(n_splits),
        }


def _per_trait_table(
    training: TrainingSet, oof: pd.DataFrame, labels: pd.DataFrame, style_oof: pd.DataFrame | None
) -> pd.DataFrame:
    questionnaire = training.questionnaire
    spearman = trait_spearman(oof, labels)
    constant = near_constant_traits(
        training.rating_rows[questionnaire.trait_ids]
        if training.rating_rows is not None
        else labels
    )
    retest = (
        trait_retest_spearman(training.rating_rows, questionnaire.trait_ids)
        if training.rating_rows is not None and training.rating_rows["rater"].nunique() > 1
        else {}
    )
    style = trait_spearman(style_oof, labels) if style_oof is not None else {}
    rows = []
    for trait_id in questionnaire.trait_ids:
        share = labels[trait_id].round().value_counts(normalize=True).iloc[0]
        rows.append(
            {
                "trait_id": trait_id,
                "text": questionnaire.trait(trait_id).text,
                "spearman": spearman[trait_id],
                "spearman_style_only": style.get(trait_id, float("nan")),
                "retest_spearman": retest.get(trait_id, float("nan")),
                "modal_share": float(share),
                "near_constant": trait_id in constant,
                "label_std": float(labels[trait_id].std()),
            }
        )
    return pd.DataFrame(rows)


def _spearman_metrics(per_trait: pd.DataFrame, prefix: str = "cv.spearman") -> dict[str, float]:
    metrics = {f"{prefix}.{r.trait_id}": float(r.spearman) for r in per_trait.itertuples()}
    varying = per_trait.loc[~per_trait["near_constant"], "spearman"]
    metrics[f"{prefix}.mean_not_near_constant"] = float(np.nanmean(varying))
    metrics["n_near_constant"] = float(per_trait["near_constant"].sum())
    for r in per_trait.itertuples():
        if r.near_constant:
            metrics[f"near_constant.{r.trait_id}"] = float(r.modal_share)
    return metrics


def evaluate_hl_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    n_splits: int = 5,
    seed: int = 0,
    style_only: bool = True,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
) -> LocalJudgeReport:
    """HAL16Q protocol: prompt-grouped CV of the trait models, HL through ``training.reward``.

    The folds keep a generator's dialogues on both sides (today's CV: it flatters a judge; the
    honest figure is :func:`hal_core.transfer.evaluate_generator_transfer`). ``extra`` domains
    (Turing witnesses) join every fold's training rows. Reports HL Pearson r against the
    recorded HL (mean over a dialogue's ratings) and against single ratings, same-prompt
    pair-order accuracy (recorded HL differs by > 1), per-trait Spearman, near-constant traits,
    the LLM judge's own test-retest ceiling and the same figures from the style features alone.
    """
    if training.reward is None:
        raise ValueError("HL evaluation needs the training set's reward")
    with blas_threads(config.blas_threads):
        return _evaluate_hl_judge(training, matrix, config, n_splits, seed, style_only, extra)


def _evaluate_hl_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    n_splits: int,
    seed: int,
    style_only: bool,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]],
) -> LocalJudgeReport:
    featurized = _FeaturizedRows.select(training, matrix)
    frame, labels, groups = featurized.frame, featurized.labels, featurized.groups
    weights = _sample_weight(frame, config)
    scale = training.questionnaire.scale
    others = (
        stack_training(list(extra), config, training.questionnaire.trait_ids) if extra else None
    )

    def cross_validate(data: _FeaturizedRows, other: LabelledRows | None) -> pd.DataFrame:
        return cross_val_traits(
            data.X, data.labels, data.groups, data.names, config, scale, n_splits, seed, weights,
            other,
        )  # fmt: skip

    oof = cross_validate(featurized, others)
    hl = training.reward.score(oof)
    recorded = frame["hal16_score"].to_numpy(float)
    agreement = hl_agreement(hl, recorded, groups)
    metrics = {
        "cv.hl.pearson": agreement.pearson,
        "cv.hl.pair_accuracy": agreement.pair_accuracy,
        "cv.hl.n_pairs": float(agreement.n_pairs),
        **featurized.size_metrics(n_splits),
        "n_train_other_domains": float(len(others) if others is not None else 0),
    }
    if training.rating_rows is not None:
        by_text = pd.Series(hl, index=frame["dialogue"])
        rows = training.rating_rows[training.rating_rows["dialogue"].isin(by_text.index)]
        metrics["cv.hl.pearson_vs_single_ratings"] = float(
            stats.pearsonr(by_text.loc[rows["dialogue"]].to_numpy(), rows["hal16_score"])[0]
        )
        ceiling = retest_ceiling(training.rating_rows)
        metrics.update({f"ceiling.hl.{k}": v for k, v in ceiling.items()})
    style_oof = None
    if style_only:
        style = featurized.style_only()
        style_others = (
            others.select_columns(style_columns(others.names)) if others is not None else None
        )
        style_oof = cross_validate(style, style_others)
        style_agreement = hl_agreement(training.reward.score(style_oof), recorded, groups)
        metrics["cv_style_only.hl.pearson"] = style_agreement.pearson
        metrics["cv_style_only.hl.pair_accuracy"] = style_agreement.pair_accuracy
    per_trait = _per_trait_table(training, oof, labels, style_oof)
    metrics.update(_spearman_metrics(per_trait))
    out = frame[["dialogue", training.group_column, "hal16_score"]].assign(hl_predicted=hl)
    out = pd.concat([out, oof.add_prefix("pred.")], axis=1)
    return LocalJudgeReport(metrics, per_trait, out, training.reward)


def evaluate_reward_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    n_splits: int = 10,
    seed: int = 0,
    style_only: bool = True,
    reward_factory: RewardFactory | None = None,
    reference: bool = True,
) -> LocalJudgeReport:
    """HAL32Q protocol: game-grouped CV of trait models *and* reward; human-vs-AI accuracy.

    The returned report carries a reward fitted on the out-of-fold predicted traits of every
    witness (what the registered judge attaches), plus the reference figures of the same
    reward protocol on the LLM judge's own ratings.
    """
    with blas_threads(config.blas_threads):
        return _evaluate_reward_judge(
            training, matrix, config, n_splits, seed, style_only, reward_factory, reference
        )


def _evaluate_reward_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    n_splits: int,
    seed: int,
    style_only: bool,
    reward_factory: RewardFactory | None,
    reference: bool,
) -> LocalJudgeReport:
    from hal_core.reward import paired_accuracy

    featurized = _FeaturizedRows.select(training, matrix)
    frame, labels, games = featurized.frame, featurized.labels, featurized.groups
    is_human = frame["is_human"].to_numpy(int)
    scale = training.questionnaire.scale

    def cross_validate(data: _FeaturizedRows) -> RewardCV:
        return cross_val_reward_on_predicted_traits(
            data.X, data.labels, is_human, data.groups, data.names, config, scale, n_splits, 5,
            seed, reward_factory,
        )  # fmt: skip

    result = cross_validate(featurized)
    metrics = {
        "cv.reward.pointwise": result.pointwise,
        "cv.reward.paired": result.paired,
        **featurized.size_metrics(n_splits),
    }
    factory = reward_factory or _paper_reward_estimator
    llm_scores = np.full(len(frame), np.nan)
    if reference:  # the same reward protocol on the LLM judge's own ratings
        for train, test in grouped_folds(games, n_splits, seed):
            model = factory().fit(labels.iloc[train].reset_index(drop=True), is_human[train])
            llm_scores[test] = model.decision_function(labels.iloc[test].reset_index(drop=True))
        metrics["reference.llm_ratings.pointwise"] = float(((llm_scores > 0) == is_human).mean())
        metrics["reference.llm_ratings.paired"] = paired_accuracy(llm_scores, is_human, games)
    style_oof = None
    if style_only:
        style = cross_validate(featurized.style_only())
        metrics["cv_style_only.reward.pointwise"] = style.pointwise
        metrics["cv_style_only.reward.paired"] = style.paired
        style_oof = style.trait_predictions
    per_trait = _per_trait_table(training, result.trait_predictions, labels, style_oof)
    metrics.update(_spearman_metrics(per_trait))
    reward = fit_reward_on_predicted_traits(result.trait_predictions, is_human, reward_factory)
    metrics["reward.n_selected"] = float(len(reward.weights))
    out = frame[[training.group_column, "witness", "is_human"]].assign(
        hl_cv=result.scores, hl_llm_ratings_cv=llm_scores
    )
    out = pd.concat([out, result.trait_predictions.add_prefix("pred.")], axis=1)
    return LocalJudgeReport(metrics, per_trait, out, reward)


def _sample_weight(frame: pd.DataFrame, config: TraitRegressorConfig) -> np.ndarray | None:
    if config.sample_weight == "n_ratings" and "n_ratings" in frame:
        return frame["n_ratings"].to_numpy(float)
    return None


def fit_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    features: FeatureConfig,
    config: TraitRegressorConfig,
    reward: HLReward | None,
    info: Mapping[str, Any] | None = None,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
    domain: DomainConfig | None = None,
) -> LocalJudge:
    """The final judge on every parseable dialogue of ``training`` and of the ``extra`` domains
    (rated on ``training``'s trait ids), with ``reward`` attached."""
    questionnaire = training.questionnaire
    rows = stack_training([(training, matrix), *extra], config, questionnaire.trait_ids)
    judge = LocalJudge.fit(
        rows,
        questionnaire,
        training.tags,
        features,
        config,
        domain,
        training={"questionnaire_id": training.questionnaire_id, **(info or {})},
    )
    return judge.with_reward(reward)
