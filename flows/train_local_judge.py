"""Flow ``train_local_judge``: recorded LLM ratings -> features -> CV + transfer -> fit -> register.

hal train-local-judge                              # HAL32Q on turing/ratings32_gpt-5.csv
hal train-local-judge --recipe infra/recipes/train_local_judge_doctor_visits.yaml  # doctor visits
hal train-local-judge --questionnaire hal16q       # the doctor's-visit judge (both domains)

A ``hal16q`` judge rates the sixteen published HAL16Q statements under their HAL32Q ids; it is
trained on ``aligned_outputs`` (GPT-5-rated doctor's visits) and, by default, on the Turing
witnesses' GPT-5 ratings of the same ids. It is the judge for doctor's-visit candidates and is
registered as ``hal-judge-local`` with the aliases ``hal16q`` and ``doctor_visit``. A ``hal32q``
judge (Turing only; aliases ``hal32q`` and ``turing``) rates Turing witnesses.

Besides today's grouped CV (``cv.*``, the same generators on both sides) the run logs the honest
figures of :mod:`hal_core.transfer`: leave-one-generator-out (``logo.*``), out-of-domain test sets
(``test.*``), Turing by AI family (``turing_family.*`` / ``logo_family.*``), each beside the
length heuristic (``baseline.length.*``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_core.domain import DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN, DomainConfig
from hal_core.features import FeatureConfig
from hal_core.forms import Internal, RunForm
from hal_core.local_judge import DOCTOR_VISIT, HAL16Q_ID, TURING, TraitRegressorConfig
from hal_core.settings import get_settings
from tasks import tracking
from tasks.local_judge import (
    LOCAL_JUDGE_MODEL_NAME,
    assemble_hal16q_training,
    assemble_hal32q_training,
    assemble_scored16_test,
    compute_features,
    cross_validate_local_judge,
    embedding_cache_path,
    evaluate_local_judge_transfer,
    fit_local_judge,
    log_local_judge,
    read_rating_tables,
    register_local_judge,
    save_local_judge,
)
from tasks.validation import Policy, validate_dataset

Domain = Literal["doctor_visit", "turing"]


class TrainLocalJudgeParams(RunForm):
    """Parameters of the local-judge stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    questionnaire: Literal["hal16q", "hal32q"] = Field(
        default="hal32q",
        description="hal16q: the doctor's-visit judge, the published HAL16Q statements under "
        "their HAL32Q ids, HL by the paper's weights as hal16_score was computed; hal32q: "
        "HAL32Q on Turing witnesses, reward fitted on the judge's own out-of-fold traits.",
    )
    domains: list[Domain] | None = Field(
        default=None,
        description="Training data: doctor_visit (aligned_outputs) and/or turing (Turing "
        "witnesses' GPT-5 ratings). None: both for hal16q, turing for hal32q. A hal16q judge "
        "always includes doctor_visit; a hal32q judge is turing only.",
    )
    hal16q_questionnaire_file: str = Field(default="questionnaires/hal16q_published.json")
    hal16q_ratings_glob: str = Field(
        default="aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv",
        description="HAL16Q-rated dialogues (relative to the data folder).",
    )
    hal16q_weights_file: str = Field(
        default="hal16_weights_paper.json", description="Published w (by position) and b."
    )
    hal16q_test_files: list[str] = Field(
        default_factory=lambda: ["synthlabs/candidates_train_scored16_gpt-5-mini.csv"],
        description="HAL16Q-rated dialogues of other generators (and judges), never trained "
        "on: out-of-domain test sets of a hal16q judge.",
    )
    hal32q_questionnaire_file: str = Field(default="questionnaires/hal32q.json")
    hal32q_ratings_file: str = Field(
        default="turing/ratings32_gpt-5.csv", description="HAL32Q-rated Turing games."
    )
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    regressor: TraitRegressorConfig = Field(default_factory=TraitRegressorConfig)
    domain: DomainConfig = Field(
        default_factory=DomainConfig, description="Calibration of the out-of-domain signal."
    )
    transfer: bool = Field(
        default=True,
        description="Also run the honest validation: leave-one-generator-out, out-of-domain "
        "tests, Turing by AI family.",
    )
    cv_folds: int | None = Field(
        default=None, ge=2, description="Grouped CV folds; default 5 (hal16q) or 10 (hal32q)."
    )
    seed: int = Field(default=0, description="Seed of the fold assignment.")
    style_only_baseline: bool = Field(
        default=False, description="Also cross-validate a judge on the style features alone."
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
        default="auto",
        description="Alias moved to the new version; 'auto' = the questionnaire id and the "
        "domain it rates (hal16q + doctor_visit, hal32q + turing).",
    )
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None

    @model_validator(mode="after")
    def _domains_fit_the_questionnaire(self) -> TrainLocalJudgeParams:
        domains = self.training_domains
        if self.questionnaire == HAL16Q_ID and DOCTOR_VISIT not in domains:
            raise ValueError(
                "a hal16q judge rates doctor's visits: its domains must include doctor_visit"
            )
        if self.questionnaire != HAL16Q_ID and domains != [TURING]:
            raise ValueError(
                "a hal32q judge trains on turing only (doctor's visits are rated on 16 traits)"
            )
        return self

    @property
    def training_domains(self) -> list[str]:
        if self.domains is not None:
            return list(dict.fromkeys(self.domains))
        return [DOCTOR_VISIT, TURING] if self.questionnaire == HAL16Q_ID else [TURING]

    def aliases(self, questionnaire_id: str) -> list[str]:
        if self.alias != "auto":
            return [self.alias] if self.alias else []
        return [questionnaire_id, DOCTOR_VISIT if questionnaire_id == HAL16Q_ID else TURING]


class TrainLocalJudgeResult(BaseModel):
    run_id: str
    model_path: str = Field(description="The saved judge folder (LocalJudge.from_path).")
    questionnaire_id: str
    questionnaire_version: str
    trait_ids: list[str] = Field(description="The trait ids the judge outputs, in order.")
    domains: list[str] = Field(description="The domains the judge was trained on.")
    fingerprint: str
    model_version: str | None
    aliases: list[str] = Field(default_factory=list)
    out_of_domain_columns: list[str] = Field(
        default_factory=lambda: [DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN],
        description="The judge's out-of-domain outputs (hal_core.domain).",
    )
    metrics: dict[str, float]


@flow(name="train_local_judge", log_prints=True)
def train_local_judge(
    params: TrainLocalJudgeParams = TrainLocalJudgeParams(),  # noqa: B008
) -> TrainLocalJudgeResult:
    """Train per-trait regressors that stand in for an LLM judge, evaluate and register them."""
    settings = get_settings()
    data_dir = settings.require_data_dir()
    hal16q = params.questionnaire == HAL16Q_ID
    domains = params.training_domains
    folds = params.cv_folds or (5 if hal16q else 10)
    started = time.perf_counter()
    with tracking.stage_run(
        "train_local_judge",
        settings.experiment_judge,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        inputs: dict[str, Path] = {}
        turing = None
        if TURING in domains:
            questionnaire32 = settings.input_path(params.hal32q_questionnaire_file)
            ratings_path = settings.input_path(params.hal32q_ratings_file)
            table = read_rating_tables(ratings_path.parent, ratings_path.name)[ratings_path.name]
            table = validate_dataset(
                table, "turing_ratings32", params.validation_policy, settings, run_id
            ).valid
            inputs.update({"turing.ratings": ratings_path, "turing.questionnaire": questionnaire32})
            turing = assemble_hal32q_training(table, questionnaire32)
        tests = []
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
            inputs.update({f"ratings.{n}": data_dir / n for n in tables})
            inputs.update({"questionnaire": questionnaire_path, "weights": weights_path})
            training = assemble_hal16q_training(tables, questionnaire_path, weights_path)
            for name in params.hal16q_test_files if params.transfer else []:
                path = settings.input_path(name)
                table = read_rating_tables(path.parent, path.name)[path.name]
                table = validate_dataset(
                    table, "scored_candidates16", params.validation_policy, settings, run_id
                ).valid
                inputs[f"test.{path.stem}"] = path
                tests.append((path.stem, assemble_scored16_test(table, questionnaire_path)))
        else:
            training = turing
        hashes = tracking.log_inputs(run_id, inputs)

        cache = embedding_cache_path(settings, params.embedding_cache)
        matrix = compute_features(training.dialogues, training.tags, params.features, cache)
        extra = []
        if hal16q and turing is not None:
            extra = [
                (turing, compute_features(turing.dialogues, turing.tags, params.features, cache))
            ]
        test_sets = [
            (name, test, compute_features(test.dialogues, test.tags, params.features, cache))
            for name, test in tests
        ]
        features_s = time.perf_counter() - started
        report = cross_validate_local_judge(
            training, matrix, params.regressor, folds, params.seed, params.style_only_baseline,
            extra,
        )  # fmt: skip
        transfer = None
        if params.transfer:
            transfer = evaluate_local_judge_transfer(
                training, matrix, params.regressor, params.domain, extra, test_sets, params.seed
            )
            report.metrics.update(transfer.metrics)
        info = {"run_id": run_id, "seed": params.seed, "input_sha256": hashes}
        judge = fit_local_judge(
            training, matrix, params.features, params.regressor, report, params.attach_reward,
            info, extra, params.domain,
        )  # fmt: skip
        report.metrics["time.features_s"] = features_s
        report.metrics["time.total_s"] = time.perf_counter() - started
        folder = save_local_judge(judge, settings.home_dir / "local_judges" / run_id)
        log_local_judge(
            run_id, training, matrix, report, folder, params.model_dump(mode="json"), transfer
        )
        aliases = params.aliases(training.questionnaire_id)
        version = None
        if params.register_as:
            version = register_local_judge(run_id, folder, params.register_as, aliases)
        shown = [
            "cv.hl.pearson", "cv.hl.pair_accuracy", "logo.hl.pearson", "logo.hl.pair_accuracy",
            "baseline.length.logo.hl.pearson", "baseline.length.logo.hl.pair_accuracy",
            "turing_family.hl.pearson", "turing_family.interrogator", "cv.reward.pointwise",
            "cv.reward.paired", "logo_family.reward.paired", "logo_family.interrogator",
            "time.total_s",
        ]  # fmt: skip
        shown += sorted(
            k for k in report.metrics if k.startswith("test.") and k.endswith("hl.pearson")
        )
        print(
            f"local judge {training.questionnaire_id} on {'+'.join(domains)} "
            f"({judge.fingerprint()}): "
            + ", ".join(f"{k} {report.metrics[k]:.3f}" for k in shown if k in report.metrics)
        )
    return TrainLocalJudgeResult(
        run_id=run_id,
        model_path=str(Path(folder)),
        questionnaire_id=training.questionnaire_id,
        questionnaire_version=training.questionnaire.version,
        trait_ids=training.questionnaire.trait_ids,
        domains=domains,
        fingerprint=judge.fingerprint(),
        model_version=version,
        aliases=aliases if version is not None else [],
        metrics=report.metrics,
    )
