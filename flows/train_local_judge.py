"""Flow ``train_local_judge``: recorded LLM ratings -> features -> grouped CV -> fit -> register.

hal train-local-judge                              # HAL32Q on turing/ratings32_gpt-5.csv
hal train-local-judge --recipe infra/recipes/train_local_judge.yaml   # the same, as a recipe
hal train-local-judge --questionnaire hal16q       # HAL16Q on aligned_outputs (paper reward)
hal train-local-judge --questionnaire hal16q --max-chunks 0   # encode every MiniLM window

The judge is registered as the MLflow pyfunc model ``hal-judge-local`` (alias: the
questionnaire id), with the questionnaire's id and version in its metadata and tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.features import FeatureConfig
from hal_core.local_judge import HAL16Q_ID, TraitRegressorConfig
from hal_core.settings import get_settings
from tasks import tracking
from tasks.local_judge import (
    LOCAL_JUDGE_MODEL_NAME,
    assemble_hal16q_training,
    assemble_hal32q_training,
    compute_features,
    cross_validate_local_judge,
    embedding_cache_path,
    fit_local_judge,
    log_local_judge,
    read_rating_tables,
    register_local_judge,
    save_local_judge,
)
from tasks.validation import Policy, validate_dataset


class TrainLocalJudgeParams(BaseModel):
    """Parameters of the local-judge stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    questionnaire: Literal["hal16q", "hal32q"] = Field(
        default="hal32q",
        description="hal32q (what the pipeline rates candidates on): HAL32Q, trained on Turing "
        "ratings, reward fitted on the judge's own out-of-fold predicted traits; hal16q: the "
        "published HAL16Q statements, trained on aligned_outputs (GPT-5 doctor's visits), HL "
        "by the paper's weights.",
    )
    hal16q_questionnaire_file: str = Field(default="questionnaires/hal16q_published.json")
    hal16q_ratings_glob: str = Field(
        default="aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv",
        description="HAL16Q-rated dialogues (relative to the data folder).",
    )
    hal16q_weights_file: str = Field(
        default="hal16_weights_paper.json", description="Published w (by position) and b."
    )
    hal32q_questionnaire_file: str = Field(default="questionnaires/hal32q.json")
    hal32q_ratings_file: str = Field(
        default="turing/ratings32_gpt-5.csv", description="HAL32Q-rated Turing games."
    )
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    regressor: TraitRegressorConfig = Field(default_factory=TraitRegressorConfig)
    cv_folds: int | None = Field(
        default=None, ge=2, description="Grouped CV folds; default 5 (hal16q) or 10 (hal32q)."
    )
    seed: int = Field(default=0, description="Seed of the fold assignment.")
    style_only_baseline: bool = Field(
        default=True, description="Also cross-validate a judge on the style features alone."
    )
    attach_reward: bool = Field(default=True, description="Registered judge also returns hl.")
    validation_policy: Policy = Field(
        default="fail", description="Stop on rows that break the data contract, or drop them."
    )
    embedding_cache: str | None = Field(
        default="cache/embeddings.sqlite",
        description="Embedding cache (SQLite) relative to HAL_HOME; empty = none.",
    )
    register_as: str | None = Field(
        default=LOCAL_JUDGE_MODEL_NAME, description="Registered model name; empty = don't."
    )
    alias: str | None = Field(
        default="auto", description="Alias moved to the new version; 'auto' = questionnaire id."
    )
    parent_run_id: tracking.ParentRunId = None


class TrainLocalJudgeResult(BaseModel):
    run_id: str
    model_path: str = Field(description="The saved judge folder (LocalJudge.from_path).")
    questionnaire_id: str
    questionnaire_version: str
    fingerprint: str
    model_version: str | None
    metrics: dict[str, float]


@flow(name="train_local_judge", log_prints=True)
def train_local_judge(params: TrainLocalJudgeParams | None = None) -> TrainLocalJudgeResult:
    """Train per-trait regressors that stand in for an LLM judge, evaluate and register them."""
    params = params or TrainLocalJudgeParams()
    settings = get_settings()
    data_dir = settings.require_data_dir()
    hal16q = params.questionnaire == HAL16Q_ID
    folds = params.cv_folds or (5 if hal16q else 10)
    with tracking.stage_run(
        "train_local_judge", settings.experiment_judge, settings, params.parent_run_id
    ) as run:
        run_id = run.info.run_id
        if hal16q:
            questionnaire_path = settings.input_path(params.hal16q_questionnaire_file)
            weights_path = settings.input_path(params.hal16q_weights_file)
            tables = read_rating_tables(data_dir, params.hal16q_ratings_glob)
            tables = {
                name: validate_dataset(
                    table, "aligned_outputs16", params.validation_policy, settings, run_id
                ).valid
                for name, table in tables.items()
            }
            inputs = {f"ratings.{n}": data_dir / n for n in tables}
            inputs.update({"questionnaire": questionnaire_path, "weights": weights_path})
            training = assemble_hal16q_training(tables, questionnaire_path, weights_path)
        else:
            questionnaire_path = settings.input_path(params.hal32q_questionnaire_file)
            ratings_path = settings.input_path(params.hal32q_ratings_file)
            table = read_rating_tables(ratings_path.parent, ratings_path.name)[ratings_path.name]
            table = validate_dataset(
                table, "turing_ratings32", params.validation_policy, settings, run_id
            ).valid
            inputs = {"ratings": ratings_path, "questionnaire": questionnaire_path}
            training = assemble_hal32q_training(table, questionnaire_path)
        hashes = tracking.log_inputs(run_id, inputs)

        cache = embedding_cache_path(settings, params.embedding_cache)
        matrix = compute_features(training.dialogues, training.tags, params.features, cache)
        report = cross_validate_local_judge(
            training, matrix, params.regressor, folds, params.seed, params.style_only_baseline
        )
        info = {"run_id": run_id, "seed": params.seed, "input_sha256": hashes}
        judge = fit_local_judge(
            training, matrix, params.features, params.regressor, report, params.attach_reward, info
        )
        folder = save_local_judge(judge, settings.home_dir / "local_judges" / run_id)
        log_local_judge(run_id, training, matrix, report, folder, params.model_dump(mode="json"))
        alias = training.questionnaire_id if params.alias == "auto" else params.alias
        version = None
        if params.register_as:
            version = register_local_judge(run_id, folder, params.register_as, alias or None)
        shown = {k: v for k, v in report.metrics.items() if k.startswith(("cv", "ceiling", "ref"))}
        print(
            f"local judge {training.questionnaire_id} ({judge.fingerprint()}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if ".spearman." not in k)
        )
    return TrainLocalJudgeResult(
        run_id=run_id,
        model_path=str(Path(folder)),
        questionnaire_id=training.questionnaire_id,
        questionnaire_version=training.questionnaire.version,
        fingerprint=judge.fingerprint(),
        model_version=version,
        metrics=report.metrics,
    )
