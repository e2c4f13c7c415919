"""Flow ``generate``: a policy speaks as the patient of a doctor's visit, for every persona.

One CSV per policy checkpoint, one row per dialogue (the generated-dialogues contract:
``dialogue_id``, ``persona_id``, ``model``, ``checkpoint``, ``epoch``, ``seed``, ``dialogue``
with ``D:``/``P:`` lines, ``degenerate`` with its reason, ...). Each dialogue is committed to
``HAL_HOME/cache/generations.sqlite`` as it finishes, so a killed run, started again, generates
only what is missing. The policy is a packaged model (``smollm2-135m-instruct``, the default),
``hal-tiny-llama``, a local HF folder or a hub id, with an optional LoRA adapter (a DPO epoch
checkpoint)::

    from flows.generate import GenerateParams, generate
    generate(GenerateParams(persona_limit=32))                        # SmolLM2, role-play
    generate(GenerateParams(adapter=".hal/training/<run>/checkpoint-8", persona_limit=32))
    generate(GenerateParams(policy="meta-llama/Llama-3.2-1B-Instruct", protocol="whole",
                            max_new_tokens=1024, prompts_file="synthlabs/prompts_train.csv"))
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue_generation import (
    DegenerateRules,
    GenerationSpec,
    Protocol,
    build_jobs,
    degenerate_counts,
    dialogue_table,
)
from hal_core.forms import Internal, RunForm
from hal_core.generation import SamplingSettings
from hal_core.personas import MAX_PROMPT_CHARS, CardSettings
from hal_core.policy_model import DEFAULT_POLICY_MODEL, policy_model_record
from hal_core.settings import PROJECT_ROOT, get_settings
from tasks import tracking
from tasks.generation import (
    checkpoint_epoch,
    fingerprint_policy,
    generate_dialogues,
    generation_metrics,
    log_generation,
    read_doctor_script,
    read_personas,
)
from tasks.rating import limit_suffix, save_table
from tasks.training import prepare_policy_model

DEFAULT_DOCTOR_SCRIPT = "infra/doctor_scripts/visit-v1.yaml"
TINY_CORPUS = ("synthlabs/prompts_test.csv", "synthlabs/candidates_test.csv")
"""What the tiny model's tokenizer is trained on (the align stage's defaults, so both stages
build the same tiny model)."""


class GenerateParams(RunForm):
    """Parameters of the generate stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        default=DEFAULT_POLICY_MODEL,
        description="Base policy: a packaged model (smollm2-135m-instruct), hal-tiny-llama, a "
        ".gguf file, a local HF folder or a hub id (from the local hub cache).",
    )
    adapter: str | None = Field(
        default=None,
        description="PEFT LoRA adapter folder applied on the policy (a DPO checkpoint such as "
        "TRAINING_DIR/checkpoint-8); None = the base policy.",
    )
    checkpoint: str | None = Field(
        default=None,
        description="Checkpoint tag of the table and dialogue ids; None = 'base', or the "
        "adapter folder's name.",
    )
    epoch: int | None = Field(
        default=None,
        ge=0,
        description="Epoch recorded in the table; None = 0 for the base, else the adapter's "
        "trainer_state.json (or an epoch-N folder name).",
    )
    prompts_file: str = Field(
        default="synthlabs/prompts_test.csv",
        description="Persona prompts (persona_id, prompt): prompts_train.csv or prompts_test.csv.",
    )
    persona_limit: int | None = Field(
        default=None, ge=1, description="Use the first N personas of prompts_file."
    )
    persona_ids: list[str] | None = Field(
        default=None, description="Use these persona ids instead (in this order)."
    )
    max_prompt_chars: int = Field(
        default=MAX_PROMPT_CHARS,
        ge=1,
        description="Longest persona prompt accepted; a longer one stops the run naming its "
        "row (refused, not cut: see hal_core.personas.MAX_PROMPT_CHARS).",
    )
    protocol: Protocol = Field(
        default="roleplay",
        description="roleplay: persona card + doctor script, the policy writes the patient's "
        "turns (small models); whole: the persona prompt, the policy writes the whole "
        "conversation (the paper's protocol, for capable models).",
    )
    doctor_script: str = Field(
        default=DEFAULT_DOCTOR_SCRIPT, description="Doctor script YAML (roleplay)."
    )
    n_turns: int = Field(default=4, ge=1, description="Patient turns per dialogue (roleplay).")
    samples_per_persona: int = Field(default=1, ge=1, description="Dialogues per persona.")
    max_new_tokens: int = Field(
        default=40,
        ge=1,
        description="Token limit of a patient turn (roleplay) or of a whole dialogue (whole).",
    )
    temperature: float = Field(default=0.8, ge=0.0, description="Sampling temperature; 0=greedy.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(
        default=1.1, ge=1.0, description="Penalty on tokens the turn already holds (1 = none)."
    )
    batch_size: int = Field(default=32, ge=1, description="Dialogues generated together.")
    dtype: Literal["float32", "bfloat16", "float16", "int8-dynamic"] = Field(
        default="float32",
        description="Precision of the policy: float32 on CPU; int8-dynamic (CPU) for about "
        "half the time a token; bfloat16 on a GPU at paper scale.",
    )
    seed: int = Field(default=0, description="Run seed; each dialogue mixes in its ids.")
    card: CardSettings = Field(
        default_factory=CardSettings, description="How much of the persona the card keeps."
    )
    degenerate: DegenerateRules = Field(
        default_factory=DegenerateRules, description="When a dialogue is flagged degenerate."
    )
    output_file: str | None = Field(
        default=None,
        description="Output CSV; None = HAL_HOME/generations/MODEL/PROMPTS-CHECKPOINT-....",
    )
    cache_file: str | None = Field(
        default=None, description="SQLite cache; None = HAL_HOME/cache/generations.sqlite."
    )
    progress: bool = Field(default=False, description="Show a progress bar on stderr.")
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None

    def spec(self) -> GenerationSpec:
        return GenerationSpec(
            protocol=self.protocol,
            n_turns=self.n_turns,
            sampling=SamplingSettings(
                n_candidates=self.samples_per_persona,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                repetition_penalty=self.repetition_penalty,
                batch_size=self.batch_size,
                seed=self.seed,
            ),
            card=self.card,
            dtype=self.dtype,
        )


class GenerateResult(BaseModel):
    """What the stage produced: the table, the policy it came from, and how it went."""

    run_id: str
    output_file: str
    model: str = Field(description="The policy as named (the table's model column).")
    model_path: str = Field(description="The folder or hub id that was loaded.")
    adapter: str | None
    checkpoint: str
    epoch: int
    policy_fingerprint: str
    n_dialogues: int
    n_generated: int
    n_cached: int
    n_degenerate: dict[str, int] = Field(description="Dialogues flagged, by reason.")
    tokens_per_second: float
    dialogues_per_minute: float
    mean_patient_words_per_turn: float


def checkpoint_tag(params: GenerateParams) -> tuple[str, int]:
    """The table's checkpoint and epoch for these parameters."""
    if params.adapter is None:
        return params.checkpoint or "base", params.epoch if params.epoch is not None else 0
    epoch = params.epoch if params.epoch is not None else checkpoint_epoch(params.adapter)
    if epoch is None:
        raise ValueError(
            f"{params.adapter}: no trainer_state.json epoch and no epoch-N name; set epoch"
        )
    return params.checkpoint or Path(params.adapter).name, epoch


def default_output(params: GenerateParams, checkpoint: str, fingerprint: str, home: Path) -> Path:
    spec = params.spec()
    key = hashlib.sha256(
        json.dumps(
            [
                fingerprint,
                spec.cache_settings(),
                params.doctor_script,
                params.samples_per_persona,
                params.persona_ids,
            ]
        ).encode()
    ).hexdigest()[:8]
    local = Path(params.policy)
    name = local.stem if local.exists() else params.policy.replace("/", "--")
    stem = Path(params.prompts_file).stem + limit_suffix(params.persona_limit)
    if params.persona_ids:
        stem += f"-ids{len(params.persona_ids)}"
    return (
        home
        / "generations"
        / name
        / f"{stem}-{params.protocol}-{checkpoint}-s{params.seed}-{key}.csv"
    )


@flow(name="generate", log_prints=True)
def generate(params: GenerateParams = GenerateParams()) -> GenerateResult:  # noqa: B008
    """The policy (and adapter) writes a doctor's-visit dialogue per persona and sample."""
    settings = get_settings()
    spec = params.spec()
    checkpoint, epoch = checkpoint_tag(params)
    prompts_path = settings.input_path(params.prompts_file)
    cache_path = Path(params.cache_file or settings.home_dir / "cache" / "generations.sqlite")
    # Bad prompts stop the run here, before a run is opened or a model is loaded.
    personas = read_personas(
        prompts_path, params.persona_limit, params.persona_ids, params.max_prompt_chars
    )
    with tracking.stage_run(
        "generate",
        settings.experiment_alignment,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        tracking.log_params(run_id, params.model_dump(exclude={"parent_run_id"}))
        inputs = {"prompts": prompts_path}
        script = None
        if params.protocol == "roleplay":
            script_path = Path(params.doctor_script)
            if not script_path.is_absolute() and not script_path.exists():
                script_path = PROJECT_ROOT / script_path
            inputs["doctor_script"] = script_path
            script = read_doctor_script(script_path)
        hashes = tracking.input_hashes(inputs)
        model_path = prepare_policy_model(params.policy, *TINY_CORPUS, settings)
        fingerprint = fingerprint_policy(model_path, params.adapter, cache_path)
        jobs = build_jobs(personas, spec, fingerprint, script)
        run_result = generate_dialogues(
            model_path,
            params.adapter,
            jobs,
            spec,
            script,
            fingerprint,
            cache_path,
            params.progress,
        )
        table = dialogue_table(
            jobs,
            run_result.dialogues,
            spec,
            params.policy,
            checkpoint,
            epoch,
            script,
            params.degenerate,
        )
        output_path = Path(
            params.output_file or default_output(params, checkpoint, fingerprint, settings.home_dir)
        )
        save_table(table, output_path)
        metrics = generation_metrics(table, run_result.stats)
        record = policy_model_record(model_path) or {}
        details = {
            "policy.path": model_path,
            "policy.fingerprint": fingerprint,
            "policy.checkpoint": checkpoint,
            "policy.epoch": str(epoch),
            **{f"input.{name}.sha256": digest for name, digest in hashes.items()},
        }
        if script is not None:
            details["doctor_script.version"] = script.fingerprint
        if record.get("source_sha256"):
            details["policy.gguf_sha256"] = record["source_sha256"]
        log_generation(run_id, metrics, output_path, details)
        counts = degenerate_counts(table)
        print(
            f"generations: {output_path} ({len(table)} dialogues, {run_result.stats.cached} "
            f"cached, {run_result.stats.tokens_per_second:.1f} tokens/s, degenerate {counts})"
        )
    return GenerateResult(
        run_id=run_id,
        output_file=str(output_path),
        model=params.policy,
        model_path=model_path,
        adapter=params.adapter,
        checkpoint=checkpoint,
        epoch=epoch,
        policy_fingerprint=fingerprint,
        n_dialogues=len(table),
        n_generated=run_result.stats.generated,
        n_cached=run_result.stats.cached,
        n_degenerate=counts,
        tokens_per_second=run_result.stats.tokens_per_second,
        dialogues_per_minute=run_result.stats.dialogues_per_minute,
        mean_patient_words_per_turn=metrics["generation.patient_words_per_turn.mean"],
    )
