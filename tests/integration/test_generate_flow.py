"""The generate flow on a tiny Llama: the dialogues table contract, MLflow read back, a rerun
served from the cache, a LoRA checkpoint as the policy, and the whole-dialogue protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.generate import GenerateParams, generate
from hal_core.dialogue_generation import DIALOGUE_COLUMNS
from hal_core.tiny_model import TINY_MODEL_NAME

BASE = {
    "policy": TINY_MODEL_NAME,
    "persona_limit": 3,
    "samples_per_persona": 2,
    "n_turns": 2,
    "max_new_tokens": 6,
    "batch_size": 4,
}


@pytest.fixture()
def cache_file(tmp_path) -> str:
    return str(tmp_path / "generations.sqlite")


def test_generate_writes_the_contract_table_and_logs_it(settings, cache_file):
    result = generate(GenerateParams(**BASE, cache_file=cache_file))
    assert (result.n_dialogues, result.n_generated, result.n_cached) == (6, 6, 0)
    assert (result.checkpoint, result.epoch) == ("base", 0)
    table = pd.read_csv(result.output_file, keep_default_na=False)
    assert tuple(table.columns) == DIALOGUE_COLUMNS
    assert table["dialogue_id"].is_unique
    assert table["dialogue_id"].iloc[0] == "0-base-s0-0"
    assert set(table["persona_id"].astype(str)) == {"0", "1", "2"}
    assert (table["model"] == TINY_MODEL_NAME).all() and (table["protocol"] == "roleplay").all()
    assert table["doctor_script"].str.startswith("visit-v1@").all()
    assert sum(result.n_degenerate.values()) == (table["degenerate"] != "").sum()

    run = MlflowClient(settings.resolved_tracking_uri()).get_run(result.run_id)
    assert run.info.run_name == "generate"
    assert run.data.metrics["generation.dialogues"] == 6
    assert run.data.metrics["generation.generated"] == 6
    assert 0 <= run.data.metrics["generation.degenerate_fraction"] <= 1
    assert "generation.degenerate.repeated_lines" in run.data.metrics
    assert run.data.params["policy.fingerprint"] == result.policy_fingerprint
    assert run.data.params["doctor_script.version"].startswith("visit-v1@")
    assert run.data.params["n_turns"] == "2"
    artifacts = MlflowClient(settings.resolved_tracking_uri()).list_artifacts(
        result.run_id, "generations"
    )
    assert [Path(a.path).name for a in artifacts] == [Path(result.output_file).name]

    again = generate(GenerateParams(**BASE, cache_file=cache_file))
    assert (again.n_generated, again.n_cached) == (0, 6)
    pd.testing.assert_frame_equal(pd.read_csv(again.output_file, keep_default_na=False), table)


def _tiny_adapter(model_path: str, folder: Path) -> Path:
    """A LoRA adapter with non-zero weights on the tiny model, saved as a DPO checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    model.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": 1.0, "global_step": 3}))
    return folder


def test_a_lora_checkpoint_is_a_policy_of_its_own(settings, cache_file, tmp_path):
    base = generate(GenerateParams(**BASE, cache_file=cache_file))
    adapter = _tiny_adapter(base.model_path, tmp_path / "checkpoint-3")
    tuned = generate(GenerateParams(**BASE, adapter=str(adapter), cache_file=cache_file))
    assert (tuned.checkpoint, tuned.epoch, tuned.n_generated) == ("checkpoint-3", 1, 6)
    assert tuned.policy_fingerprint != base.policy_fingerprint
    tuned_table = pd.read_csv(tuned.output_file, keep_default_na=False)
    base_table = pd.read_csv(base.output_file, keep_default_na=False)
    assert tuned_table["dialogue_id"].iloc[0] == "0-checkpoint-3-s0-0"
    assert (tuned_table["epoch"] == 1).all()
    assert (tuned_table["dialogue"] != base_table["dialogue"]).any()
    named = generate(
        GenerateParams(**BASE, adapter=str(adapter), checkpoint="epoch-1", cache_file=cache_file)
    )
    assert named.n_cached == 6 and named.checkpoint == "epoch-1"


def test_the_whole_dialogue_protocol_keeps_and_flags_what_it_cannot_read(settings, cache_file):
    params = {**BASE, "protocol": "whole", "max_new_tokens": 12, "samples_per_persona": 1}
    result = generate(GenerateParams(**params, cache_file=cache_file))
    table = pd.read_csv(result.output_file, keep_default_na=False)
    assert len(table) == 3 and (table["protocol"] == "whole").all()
    assert (table["doctor_script"] == "").all()
    # A random tiny model writes no P:/D: lines: every dialogue is kept, flagged.
    assert set(table["degenerate"]) <= {"empty", "wrong_speaker_tags"}


def _prompts_file(tmp_path: Path, data_dir: Path, kind: str) -> Path:
    """A header-only prompts file, or two real prompts of which the second is 100,000
    characters longer (one biography word repeated)."""
    path = tmp_path / f"prompts-{kind}.csv"
    if kind == "header-only":
        path.write_text("persona_id,prompt\n", encoding="utf-8")
        return path
    table = pd.read_csv(data_dir / "synthlabs" / "prompts_test.csv").head(2)
    table.loc[1, "prompt"] = table.loc[1, "prompt"].replace(
        "Biography: ", "Biography: " + "word " * 20_000, 1
    )
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("header-only", ": no prompt rows under the header (rule: at least one prompt row)"),
        ("over-long", " column 'prompt': row 2 (persona_id 1) has 10"),
    ],
)
def test_bad_prompts_stop_the_cli_before_a_run_or_a_model(
    settings, data_dir, tmp_path, monkeypatch, kind, message
):
    from click.testing import CliRunner

    import flows.generate
    from hal_cli.commands import app

    prepared = []
    monkeypatch.setattr(flows.generate, "prepare_policy_model", lambda *a: prepared.append(a))
    prompts = _prompts_file(tmp_path, data_dir, kind)
    invoked = CliRunner().invoke(
        app, ["generate", "--policy", TINY_MODEL_NAME, "--set", f"prompts_file={prompts}"]
    )
    assert invoked.exit_code != 0
    assert f"{prompts}{message}" in invoked.output
    if kind == "over-long":
        assert "at most 8,000 characters; longer ones are refused, not cut" in invoked.output
    assert prepared == []  # no model was built or loaded
    client = MlflowClient(settings.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_alignment)
    runs = (
        client.search_runs([experiment.experiment_id], f"params.prompts_file = '{prompts}'")
        if experiment
        else []
    )
    assert runs == []  # no MLflow run was opened for it
