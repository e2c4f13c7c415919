"""Flow ``derive_traits``: judges' statements -> clusters -> a questionnaire with stable ids.

hal derive-traits                                        # statements_gpt-5.csv, extractive
hal derive-traits --statements-file turing/statements_gpt-5-mini.csv
hal derive-traits --consolidator llm --completer mypackage.llm:make_completer
hal derive-traits --consolidator llm --consolidator-judge judge.yaml   # an OpenAI-compatible model
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_core.derivation import DerivationRecipe, trait_centroids
from hal_core.forms import Internal, RunForm
from hal_core.judges import JudgeConfig
from hal_core.questionnaire import Questionnaire
from hal_core.settings import get_settings
from tasks import tracking
from tasks.derivation import (
    DerivationEvidence,
    assess_stability,
    cluster_statements,
    consolidate_traits,
    embed_statements,
    extract_statements,
    judge_completer,
    layout_store,
    load_statements,
    log_derivation,
    map_statements,
    measure_coverage,
    measure_seed_coverage,
    publish_coverage,
    resolve_completer,
    resolve_recipe_path,
    save_questionnaire,
)
from tasks.validation import Policy, validate_dataset

STATEMENTS_CONTRACT = "statements"


class DeriveTraitsParams(RunForm):
    """Parameters of the trait-derivation stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    statements_file: str = Field(
        default="turing/statements_gpt-5.csv",
        description="Statements table (JSON list of statements per game): absolute, relative "
        "to the working folder when it is there, else to the data folder.",
    )
    recipe_file: str = Field(
        default="infra/recipes/derive_traits.yaml",
        description="Derivation recipe YAML, relative to the project root (or absolute).",
    )
    seeds: list[int] | None = Field(
        default=None, description="Override the recipe's clustering seeds (at least two)."
    )
    consolidator: Literal["extractive", "llm"] = Field(
        default="extractive",
        description="extractive: each kept cluster's representative statement (offline); "
        "llm: a text model rewrites and groups the representatives.",
    )
    completer: str | None = Field(
        default=None,
        description="For llm: 'package.module:name' of an object with complete(prompt) -> str, "
        "or of a zero-argument factory returning one.",
    )
    consolidator_judge: JudgeConfig | None = Field(
        default=None,
        description="For llm, instead of completer: a judge (openai backend: any "
        "OpenAI-compatible endpoint) whose model writes the consolidation.",
    )
    reference_questionnaire: str | None = Field(
        default="questionnaires/hal32q.json",
        description="Questionnaire to measure coverage against (data folder); empty = none.",
    )
    cache_layouts: bool = Field(
        default=True,
        description="Reuse UMAP layouts stored under HAL_HOME for identical vectors, recipe and "
        "seed (they are deterministic); off = recompute every layout.",
    )
    questionnaire_name: str | None = Field(
        default=None,
        description="Name of the derived questionnaire; default derived-STATEMENTS_FILE.",
    )
    validation_policy: Policy = Field(
        default="fail",
        description="Stop on malformed statements rows, or quarantine them and go on.",
    )
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None

    @model_validator(mode="after")
    def _llm_needs_one_text_model(self) -> DeriveTraitsParams:
        models = int(bool(self.completer)) + int(self.consolidator_judge is not None)
        if self.consolidator == "llm" and models != 1:
            raise ValueError(
                "consolidator 'llm' needs one text model: completer='package.module:name' or "
                "consolidator_judge (a judge config)"
            )
        return self


class DeriveTraitsResult(BaseModel):
    run_id: str
    questionnaire_path: str
    questionnaire_version: str
    trait_ids: list[str]
    main_seed: int
    metrics: dict[str, float]


def _recipe(params: DeriveTraitsParams, path: Path) -> DerivationRecipe:
    recipe = DerivationRecipe.load(path)
    if params.seeds is not None:
        recipe = DerivationRecipe.model_validate(recipe.model_dump() | {"seeds": params.seeds})
    return recipe


@flow(name="derive_traits", log_prints=True)
def derive_traits(params: DeriveTraitsParams = DeriveTraitsParams()) -> DeriveTraitsResult:  # noqa: B008
    """Derive a human-likeness questionnaire from judges' statements and measure it."""
    settings = get_settings()
    statements_path = settings.input_path(params.statements_file)
    recipe_path = resolve_recipe_path(params.recipe_file)
    recipe = _recipe(params, recipe_path)
    completer = None
    if params.consolidator == "llm":
        completer = (
            resolve_completer(params.completer)
            if params.completer
            else judge_completer(params.consolidator_judge, settings)
        )
    name = params.questionnaire_name or f"derived-{statements_path.stem}"
    inputs = {"statements": statements_path, "recipe": recipe_path}
    if params.reference_questionnaire:
        inputs["reference"] = settings.input_path(params.reference_questionnaire)
    with tracking.stage_run(
        "derive_traits",
        settings.experiment_traits,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        hashes = tracking.log_inputs(run_id, inputs)
        table = load_statements(statements_path)
        report = validate_dataset(
            table, STATEMENTS_CONTRACT, params.validation_policy, settings, run_id
        )
        statements = extract_statements(report.valid, params.validation_policy)
        embeddings = embed_statements(statements.texts, settings)
        clustering = cluster_statements(
            embeddings, recipe, layout_store(settings, params.cache_layouts)
        )
        derivation = consolidate_traits(
            embeddings,
            statements.texts,
            clustering,
            recipe,
            params.consolidator,
            completer,
            name,
            {
                "statements_file": statements_path.name,
                "statements_sha256": hashes["statements"],
                "quarantined_rows": len(report.quarantined) + len(statements.quarantined),
            },
        )
        questionnaire = derivation.questionnaire
        stability = assess_stability(clustering, derivation, embeddings, recipe)
        layout = map_statements(clustering, derivation.main.seed)
        coverage = cluster_coverage = seed_coverage = None
        if params.reference_questionnaire:
            reference = Questionnaire.load(inputs["reference"])
            reference_vectors = embed_statements([t.text for t in reference.traits], settings)
            derived_vectors = embed_statements([t.text for t in questionnaire.traits], settings)
            coverage = measure_coverage(
                reference, reference_vectors, questionnaire, derived_vectors
            )
            centroids = trait_centroids(embeddings, derivation.members)  # diagnostic
            cluster_coverage = measure_coverage(
                reference, reference_vectors, questionnaire, centroids
            )
            seed_coverage = measure_seed_coverage(
                clustering, statements.texts, reference, reference_vectors
            )
        path = save_questionnaire(questionnaire, settings)
        evidence = DerivationEvidence(
            statements_file=params.statements_file,
            statements=statements,
            quarantined_rows=len(report.quarantined) + len(statements.quarantined),
            derivation=derivation,
            stability=stability,
            layout=layout,
            coverage=coverage,
            cluster_coverage=cluster_coverage,
            questionnaire_path=path,
            seed_coverage=seed_coverage,
        )
        metrics = log_derivation(
            run_id,
            evidence,
            recipe,
            {
                "statements_file": params.statements_file,
                "consolidator": params.consolidator,
                "completer": params.completer or "",
                "validation_policy": params.validation_policy,
                "cache_layouts": params.cache_layouts,
                "reference_questionnaire": params.reference_questionnaire or "",
                "main_seed": derivation.main.seed,
            },
        )
        if coverage is not None:
            publish_coverage(coverage, metrics, run_id)
        figures = ", ".join(
            f"{k} {v:.3g}" for k, v in metrics.items() if k.startswith(("coverage.", "stab"))
        )
        print(f"{name} {questionnaire.version}: {len(questionnaire.traits)} traits; {figures}")
    return DeriveTraitsResult(
        run_id=run_id,
        questionnaire_path=str(path),
        questionnaire_version=questionnaire.version,
        trait_ids=questionnaire.trait_ids,
        main_seed=derivation.main.seed,
        metrics=metrics,
    )
