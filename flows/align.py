"""Flow ``align``: candidates -> HL scores -> preference pairs -> DPO training (its own processes).

The same flow trains the tiny model on this CPU and Llama-3.2-1B on GPUs; only the recipe,
the accelerate config and the number of processes change::

    hal align --scores-file scores.csv            # tiny model on this CPU: 2 processes, ZeRO-2
    hal align --judge infra/judges/vllm-local.yaml --dpo-recipe llama-3.2-1b-lora-fast \\
        --accelerate-config zero3 --num-processes 8

Rerunning it after the training was killed resumes from the last checkpoint (same inputs give
the same output folder); ``force_fresh_start`` starts over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_core.dialogue import SpeakerTags
from hal_core.domain import OUT_OF_DOMAIN_COLUMN
from hal_core.dpo_recipe import read_recipe
from hal_core.forms import Internal, RunForm
from hal_core.generation import SamplingSettings
from hal_core.judges import JudgeConfig, ratings_table
from hal_core.preferences import PairingConfig
from hal_core.scoring import ERROR_COLUMN, MISSING_STATUS, STATUS_COLUMN, hl_scores
from hal_core.settings import PROJECT_ROOT, HalSettings, get_settings
from tasks import tracking
from tasks.scoring import load_reward
from tasks.training import (
    PairsArtifact,
    TrainingLaunch,
    TrainingOutcome,
    build_preference_pairs,
    check_training_recipe,
    input_digest,
    launch_training,
    log_preference_pairs,
    log_training_summary,
    prepare_policy_model,
    read_candidates,
    read_ratings_table,
    read_scores,
    save_preference_pairs,
    score_candidates,
    validate_preference_pairs,
)

RECIPES_DIR = Path("infra/recipes/dpo")


class GenerationParams(BaseModel):
    """Generate candidates instead of reading them from ``candidates_file``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "openai"] = Field(
        description="local = transformers model (batched generate); openai = compatible endpoint."
    )
    model: str = Field(description="Local folder or hub id, or the endpoint's model name.")
    base_url: str | None = Field(default=None, description="Endpoint URL (openai backend).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Env var with the API key.")
    prompt_limit: int | None = Field(default=None, description="Use the first N prompts only.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)


class AlignParams(RunForm):
    """Parameters of the alignment stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    candidates_file: str = Field(
        default="synthlabs/candidates_test.csv",
        description="Candidate responses: the dataset's (4 per persona, prompts from "
        "prompts_file) or a generate output (its persona cards are the prompts; degenerate "
        "dialogues are left out).",
    )
    prompts_file: str = Field(
        default="synthlabs/prompts_test.csv", description="Persona prompts, by persona_id."
    )
    prompt_limit: int | None = Field(
        default=None, ge=1, description="Use the candidates of the first N prompts only."
    )
    generation: GenerationParams | None = Field(
        default=None, description="Generate candidates with a model instead of reading them."
    )
    ratings_file: str | None = Field(
        default=None,
        description="Trait ratings of the candidates (a rate_dialogues output whose item_id "
        "is the candidate id); the reward turns them into HL (skips the judge).",
    )
    scores_file: str | None = Field(
        default=None, description="Precomputed HL scores per candidate (skips the judge)."
    )
    scores_id_column: str = Field(default="candidate_id", description="Id column of scores_file.")
    scores_column: str = Field(default="hl", description="Score column of scores_file.")
    judge: JudgeConfig | None = Field(
        default=None, description="Judge that rates candidates when no scores_file is given."
    )
    reward_file: str = Field(
        default="hal16_weights_paper.json",
        description="Reward JSON (weights by trait id) or the paper's published w/b file.",
    )
    questionnaire_file: str = Field(
        default="questionnaires/hal32q.json", description="Questionnaire the reward's ids name."
    )
    pairing: PairingConfig = Field(default_factory=PairingConfig, description="k, split, seed.")
    validation_policy: Literal["fail", "quarantine"] = Field(
        default="fail", description="What a pair that breaks the preferences contract does."
    )
    recipe: str = Field(
        default="tiny-cpu",
        description="DPO recipe: a name in infra/recipes/dpo/ or a YAML path.",
    )
    model_name_or_path: str | None = Field(
        default=None, description="Overrides the recipe's model (hub id, folder, hal-tiny-llama)."
    )
    recipe_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Recipe keys to override (e.g. num_train_epochs)."
    )
    accelerate_config: Literal["single", "ddp", "zero2", "zero3"] = Field(
        default="zero2", description="An accelerate config of infra/accelerate (NAME.yaml)."
    )
    num_processes: int = Field(default=2, ge=1, description="Training processes (GPUs).")
    output_dir: str | None = Field(
        default=None, description="Training folder; default HAL_HOME/training/RECIPE-INPUTS_HASH."
    )
    force_fresh_start: bool = Field(
        default=False, description="Discard checkpoints of an earlier run instead of resuming."
    )
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None

    @model_validator(mode="after")
    def _one_process_for_single(self) -> AlignParams:
        if self.accelerate_config == "single" and self.num_processes != 1:
            raise ValueError("accelerate_config 'single' runs one process: set num_processes 1")
        return self


class AlignResult(BaseModel):
    run_id: str
    pairs: PairsArtifact
    model_name_or_path: str
    training: TrainingOutcome
    summary: dict[str, float]


def recipe_path(recipe: str) -> Path:
    """A recipe name (``tiny-cpu``) or path, as a path relative to the project root."""
    candidate = Path(recipe)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return RECIPES_DIR / f"{recipe}.yaml"


def recipe_model(path: Path) -> str | None:
    """The model a recipe names (before command-line overrides)."""
    return read_recipe(PROJECT_ROOT / path).get("model_name_or_path")


def check_alignment_recipe(params: AlignParams, settings: HalSettings) -> dict[str, Any]:
    """The DPO recipe with the overrides known before any data is read, and the accelerate
    config, checked; the pairs (``dataset_path``) and a model to build are still pending."""
    known = {"model_name_or_path": params.model_name_or_path, "output_dir": params.output_dir}
    overrides = {**params.recipe_overrides, **{k: v for k, v in known.items() if v is not None}}
    return check_training_recipe(
        str(recipe_path(params.recipe)), overrides, params.accelerate_config, settings
    )


def build_scorer(params: AlignParams, settings: HalSettings):
    """HL scores: the judge rates each candidate through the rating cache (a rerun asks only
    for what is missing; the API key comes from the environment or a Prefect Secret block),
    and the reward weighs the ratings by trait id."""
    from hal_core.questionnaire import Questionnaire
    from tasks.rating import rate_with_judge

    reward = load_reward(params.reward_file, settings)
    questionnaire = Questionnaire.load(settings.input_path(params.questionnaire_file))
    needed = questionnaire.subset(list(reward.trait_ids), name=f"{questionnaire.name}-reward")

    def score(candidates: pd.DataFrame) -> pd.DataFrame:
        rating = rate_with_judge(
            candidates["response"].astype(str).tolist(),
            needed,
            SpeakerTags.doctor_visit(),
            params.judge,
            settings.home_dir / "cache" / "ratings.sqlite",
            data_dir=settings.data_dir,
        )
        table = ratings_table(rating, needed).set_axis(candidates.index)
        return hl_scores(table, reward)

    return score


def generated_candidates(params: AlignParams, settings: HalSettings) -> pd.DataFrame:
    """Candidates from a model (the generation parameters) for the persona prompts."""
    from hal_core import generation

    spec = params.generation
    prompts = generation.load_prompts(settings.input_path(params.prompts_file), spec.prompt_limit)
    if spec.backend == "local":
        model, tokenizer = generation.load_causal_lm(spec.model)
        return generation.generate_candidates_local(
            prompts, model, tokenizer, spec.sampling, Path(spec.model).name
        )
    complete = generation.openai_completer(
        spec.model, spec.base_url, os.environ.get(spec.api_key_env), spec.sampling
    )
    return generation.generate_candidates_remote(prompts, complete, spec.sampling, spec.model)


def gather_candidates(params: AlignParams, settings: HalSettings, run_id: str) -> pd.DataFrame:
    """Candidates read from the data folder (inputs logged) or generated by a model."""
    if params.generation is None:
        tracking.log_inputs(
            run_id,
            {
                "candidates": settings.input_path(params.candidates_file),
                "prompts": settings.input_path(params.prompts_file),
            },
        )
        candidates = read_candidates(params.candidates_file, params.prompts_file, settings)
    else:
        candidates = generated_candidates(params, settings)
    if params.prompt_limit is not None:
        kept = candidates["prompt_id"].drop_duplicates().head(params.prompt_limit)
        candidates = candidates[candidates["prompt_id"].isin(kept)]
    return candidates


def ratings_scorer(params: AlignParams, settings: HalSettings):
    """HL scores from recorded trait ratings (by candidate id) and the reward; a candidate
    without a rated row gets a score error. The judge's out-of-domain flag travels along."""
    reward = load_reward(params.reward_file, settings)
    ratings = read_ratings_table(params.ratings_file, settings)

    def score(candidates: pd.DataFrame) -> pd.DataFrame:
        rows = ratings.reindex(candidates["candidate_id"].astype(str)).set_axis(candidates.index)
        unrated = rows[STATUS_COLUMN].isna()
        rows[[STATUS_COLUMN, ERROR_COLUMN]] = rows[[STATUS_COLUMN, ERROR_COLUMN]].astype(object)
        rows.loc[unrated, STATUS_COLUMN] = MISSING_STATUS
        rows.loc[unrated, ERROR_COLUMN] = f"no rating for this candidate in {params.ratings_file}"
        rows.attrs["source"] = ratings.attrs.get("source")
        scores = hl_scores(rows, reward)
        if OUT_OF_DOMAIN_COLUMN in rows.columns:
            scores[OUT_OF_DOMAIN_COLUMN] = rows[OUT_OF_DOMAIN_COLUMN]
        return scores

    return score


def score(params: AlignParams, settings: HalSettings, candidates: pd.DataFrame) -> pd.DataFrame:
    """HL scores from a precomputed table, recorded ratings, or the judge; with the reward."""
    if params.ratings_file is not None:
        return score_candidates(candidates, scorer=ratings_scorer(params, settings))
    if params.scores_file is not None:
        return score_candidates(
            candidates,
            scores=read_scores(params.scores_file, settings),
            id_column=params.scores_id_column,
            score_column=params.scores_column,
        )
    if params.judge is not None:
        return score_candidates(candidates, scorer=build_scorer(params, settings))
    raise ValueError("align needs ratings_file, scores_file or a judge to score the candidates")


def training_launch(
    params: AlignParams,
    settings: HalSettings,
    model_path: str,
    pairs: PairsArtifact,
    run_id: str,
) -> TrainingLaunch:
    """The launch; its folder is keyed by the inputs, so a rerun resumes the same training."""
    recipe = recipe_path(params.recipe)
    key = input_digest(recipe.name, model_path, pairs.sha256, params.recipe_overrides)
    output_dir = params.output_dir or str(settings.home_dir / "training" / f"{recipe.stem}-{key}")
    return TrainingLaunch(
        recipe_file=str(recipe),
        overrides={
            **params.recipe_overrides,
            "model_name_or_path": model_path,
            "dataset_path": pairs.dataset_path,
        },
        accelerate_config=params.accelerate_config,
        num_processes=params.num_processes,
        output_dir=output_dir,
        log_file=str(Path(output_dir).with_suffix(".log")),
        parent_run_id=run_id,
        fresh_start=params.force_fresh_start,
    )


@flow(name="align", log_prints=True)
def align(params: AlignParams = AlignParams()) -> AlignResult:  # noqa: B008
    """Score candidates, pair them by HL score, and train the policy with DPO + LoRA."""
    settings = get_settings()
    check_alignment_recipe(params, settings)  # a bad recipe fails before any data is read
    with tracking.stage_run(
        "align",
        settings.experiment_alignment,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        tracking.log_params(run_id, params.model_dump())
        candidates = gather_candidates(params, settings, run_id)
        scored = score(params, settings, candidates)
        pairs = build_preference_pairs(scored, params.pairing)
        pairs = validate_preference_pairs(pairs, params.validation_policy, settings, run_id)
        artifact = save_preference_pairs(pairs, params.pairing, settings)
        log_preference_pairs(run_id, artifact)
        stats = artifact.stats
        print(
            f"{stats['n_pairs']} pairs over {stats['prompts_covered']}/{stats['n_prompts']} "
            f"prompts (σ {stats['sigma']:.3f}, k·σ {stats['threshold']:.3f}), "
            f"{stats['n_excluded']} candidates excluded"
        )
        model_path = prepare_policy_model(
            params.model_name_or_path or recipe_model(recipe_path(params.recipe)),
            params.prompts_file,
            params.candidates_file,
            settings,
        )
        launch = training_launch(params, settings, model_path, artifact, run_id)
        outcome = launch_training(launch, settings)
        summary = {
            **{
                f"pairs.{key}": float(value)
                for key, value in stats.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            },
            **log_training_summary(run_id, outcome),
        }
        print(f"training run {outcome.run_id}: {summary}")
    return AlignResult(
        run_id=run_id,
        pairs=artifact,
        model_name_or_path=model_path,
        training=outcome,
        summary=summary,
    )
