"""DPO training as users run it: `accelerate launch` with DeepSpeed on 2 CPU processes (gloo).

The tiny Llama trains for a few steps on real pairs built from ``candidates_test.csv``; what
the tests check is read back from MLflow and from the training folder.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from flows.align import AlignParams, AlignResult, recipe_path
from hal_cli.commands import app
from hal_core.dialogue import SpeakerTags, rated_turns
from hal_core.generation import load_candidates
from hal_core.preferences import PairingConfig
from hal_core.settings import HalSettings
from hal_core.tiny_model import TINY_MODEL_NAME
from hal_core.training import RUN_RECORD
from tasks import tracking
from tasks.training import (
    RecipeRejectedError,
    TrainingFailedError,
    TrainingLaunch,
    build_preference_pairs,
    check_training_recipe,
    launch_training,
    prepare_policy_model,
    read_candidates,
    save_preference_pairs,
    score_candidates,
    start_training,
    stop_process_tree,
)

pytestmark = pytest.mark.integration

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
CURVE_KEYS = ("loss", *REWARD_KEYS, "logps/chosen", "logps/rejected", "learning_rate", "grad_norm")
PAIRS_PER_EPOCH = 8  # 2 processes x micro-batch 2 -> 2 optimizer steps per epoch
TINY_RECIPE = recipe_path("tiny-cpu")


def turn_length_score(text: str) -> float:
    """A transparent stand-in for the HL score: shorter patient turns score higher."""
    turns = rated_turns(text, SpeakerTags.doctor_visit())
    return float(-np.log(np.mean([len(t.split()) for t in turns]))) if turns else float("nan")


@pytest.fixture(scope="module")
def module_settings(hal_home: Path, data_dir: Path) -> HalSettings:
    return HalSettings(
        home=hal_home, data_dir=data_dir, tracking_uri=f"sqlite:///{hal_home / 'mlflow.db'}"
    )


@pytest.fixture(scope="module")
def scores_file(data_dir: Path, tmp_path_factory) -> Path:
    candidates = load_candidates(
        data_dir / "synthlabs" / "candidates_test.csv", data_dir / "synthlabs" / "prompts_test.csv"
    )
    path = tmp_path_factory.mktemp("scores") / "scores.csv"
    pd.DataFrame(
        {
            "candidate_id": candidates["candidate_id"],
            "hl": candidates["response"].map(turn_length_score),
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def pairs_and_model(module_settings: HalSettings, scores_file: Path) -> tuple[str, str]:
    """Pairs from the real candidates and the tiny model, built the way the align flow does."""
    candidates = read_candidates.fn(
        "synthlabs/candidates_test.csv", "synthlabs/prompts_test.csv", module_settings
    )
    scored = score_candidates.fn(candidates, scores=pd.read_csv(scores_file))
    config = PairingConfig()
    pairs = build_preference_pairs.fn(scored, config)
    artifact = save_preference_pairs.fn(pairs, config, module_settings)
    model = prepare_policy_model.fn(
        TINY_MODEL_NAME,
        "synthlabs/prompts_test.csv",
        "synthlabs/candidates_test.csv",
        module_settings,
    )
    return artifact.dataset_path, model


def tiny_launch(
    tmp_path: Path, pairs_and_model, accelerate_config: str, epochs: int, **overrides
) -> TrainingLaunch:
    dataset_path, model = pairs_and_model
    return TrainingLaunch(
        recipe_file=str(TINY_RECIPE),
        overrides={
            "model_name_or_path": model,
            "dataset_path": dataset_path,
            "max_train_samples": PAIRS_PER_EPOCH,
            "num_train_epochs": epochs,
            **overrides,
        },
        accelerate_config=accelerate_config,
        num_processes=2,
        output_dir=str(tmp_path / "training"),
        log_file=str(tmp_path / "training.log"),
    )


def assert_curves_and_checkpoints(client: MlflowClient, run_id: str, steps: int) -> None:
    for key in CURVE_KEYS:
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, steps + 1)), key
    margins = [m.value for m in client.get_metric_history(run_id, "rewards/margins")]
    assert all(np.isfinite(margins))
    files = {a.path for a in client.list_artifacts(run_id, f"checkpoints/checkpoint-{steps}")}
    assert f"checkpoints/checkpoint-{steps}/adapter_model.safetensors" in files
    assert f"checkpoints/checkpoint-{steps}/tokenizer.json" in files


def assert_only_lora_parameters_trained(client: MlflowClient, run_id: str, folder: Path) -> None:
    """The adapter holds LoRA tensors only; every lora_B (initialised at zero) moved, and with
    two checkpoints every tensor differs between them."""
    final = load_file(
        client.download_artifacts(run_id, "final/adapter_model.safetensors", str(folder / "f"))
    )
    assert final and all("lora_A" in name or "lora_B" in name for name in final)
    assert all(t.abs().sum() > 0 for name, t in final.items() if "lora_B" in name)
    checkpoints = sorted(
        (a.path for a in client.list_artifacts(run_id, "checkpoints")),
        key=lambda path: int(path.rsplit("-", 1)[1]),
    )
    if len(checkpoints) > 1:
        first = load_file(
            client.download_artifacts(
                run_id, f"{checkpoints[0]}/adapter_model.safetensors", str(folder / "c")
            )
        )
        assert first.keys() == final.keys()
        unchanged = [name for name in final if (first[name] == final[name]).all()]
        assert not unchanged, unchanged


def test_hal_align_trains_with_zero2_on_two_processes(settings, scores_file, tmp_path):
    invocation = CliRunner().invoke(
        app,
        [
            "align",
            "--scores-file", str(scores_file),
            "--dpo-recipe", "tiny-cpu",
            "--accelerate-config", "zero2",
            "--num-processes", "2",
            "--set", f"recipe_overrides.max_train_samples={PAIRS_PER_EPOCH}",
        ],
    )  # fmt: skip
    assert invocation.exit_code == 0, invocation.output
    output = invocation.stdout
    result = AlignResult.model_validate_json(output[output.index('{\n  "run_id"') :])
    tracking.configure_tracking(settings)
    client = MlflowClient()

    # The stage run: pair statistics, the pairs as a dataset input, the training summary.
    stage = client.get_run(result.run_id)
    pairs = pd.read_csv(result.pairs.table_path)
    sigma = result.pairs.stats["sigma"]
    assert (pairs["chosen_score"] - pairs["rejected_score"] > 0.5 * sigma).all()
    assert stage.data.metrics["pairs.n_pairs"] == len(pairs) > 500
    assert stage.data.metrics["pairs.prompts_covered"] > 150
    assert stage.inputs.dataset_inputs[0].dataset.name.startswith("preference-pairs-")
    stage_files = {a.path for a in client.list_artifacts(result.run_id, "preferences")}
    assert "preferences/delta_histogram.png" in stage_files
    assert "dpo.rewards.margins" in stage.data.metrics

    # The training run: a child of the stage run, with every curve and checkpoint.
    run_id = result.training.run_id
    training = client.get_run(run_id)
    assert training.data.tags["mlflow.parentRunId"] == result.run_id
    assert training.info.status == "FINISHED"
    steps = 2 * PAIRS_PER_EPOCH // 4
    assert_curves_and_checkpoints(client, run_id, steps)
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/checkpoint-2",
        "checkpoints/checkpoint-4",
    }
    assert_only_lora_parameters_trained(client, run_id, tmp_path)
    # Curves on the held-out pairs, one point per epoch; an adapter checkpoint per epoch.
    eval_steps = [m.step for m in client.get_metric_history(run_id, "eval_rewards/margins")]
    assert eval_steps == [steps // 2, steps]
    assert [(c.epoch, c.step) for c in result.training.checkpoints] == [(1, 2), (2, 4)]
    assert all(
        Path(c.path, "adapter_model.safetensors").is_file() for c in result.training.checkpoints
    )


@pytest.mark.slow
def test_zero3_on_two_processes_trains_only_lora(module_settings, pairs_and_model, tmp_path):
    launch = tiny_launch(tmp_path, pairs_and_model, "zero3", epochs=1)
    outcome = launch_training(launch, module_settings)
    tracking.configure_tracking(module_settings)
    client = MlflowClient()
    assert "process 0/2, device cpu, distributed DistributedType.DEEPSPEED, ZeRO stage 3" in (
        Path(outcome.log_file).read_text()
    )
    assert_curves_and_checkpoints(client, outcome.run_id, steps=2)
    assert_only_lora_parameters_trained(client, outcome.run_id, tmp_path)


def test_killed_training_resumes_from_its_last_checkpoint(
    module_settings, pairs_and_model, tmp_path
):
    launch = tiny_launch(tmp_path, pairs_and_model, "zero2", epochs=3)
    process = start_training(launch, module_settings)
    first_log = []
    for line in process.stdout:
        first_log.append(line)
        if "logged checkpoint checkpoint-" in line:
            stop_process_tree(process.pid, signal.SIGKILL)  # the launcher and every rank
            break
    process.wait(timeout=60)
    assert process.returncode != 0
    killed_at = max(
        int(p.name.split("-")[1])
        for p in Path(launch.output_dir).glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )
    assert killed_at < 6
    run_id = json.loads((Path(launch.output_dir) / RUN_RECORD).read_text())["run_id"]

    outcome = launch_training(launch, module_settings)
    resumed_log = Path(outcome.log_file).read_text()
    tracking.configure_tracking(module_settings)
    client = MlflowClient()
    run = client.get_run(outcome.run_id)
    assert outcome.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["hal.resumed_from"] == f"checkpoint-{killed_at}"
    assert f"checkpoint-{killed_at}" in resumed_log and "resuming from" in resumed_log
    steps = sorted(m.step for m in client.get_metric_history(run_id, "rewards/margins"))
    assert set(steps) == set(range(1, 7))
    assert steps.count(killed_at) == 1  # no step up to the checkpoint was trained twice


def test_bad_recipe_fails_its_check_naming_the_key(module_settings):
    with pytest.raises(
        RecipeRejectedError,
        match=rf"override --lora_rr of recipe {TINY_RECIPE}: unknown key 'lora_rr' "
        r"\(did you mean 'lora_r'\?\)",
    ):
        check_training_recipe.fn(str(TINY_RECIPE), {"lora_rr": 4}, "zero2", module_settings)
    with pytest.raises(RecipeRejectedError, match=r"no accelerate config zero9\.yaml; known: "):
        check_training_recipe.fn(str(TINY_RECIPE), {}, "zero9", module_settings)
    with pytest.raises(RecipeRejectedError, match=r"recipe .*missing\.yaml: cannot be read"):
        check_training_recipe.fn("infra/recipes/dpo/missing.yaml", {}, "zero2", module_settings)


def test_recipe_keys_are_checked_by_name_type_and_range(tmp_path):
    from hal_core import dpo_recipe as script

    base = ["--model_name_or_path", "some/model", "--dataset_path", "pairs", "--output_dir", "out"]
    for recipe in sorted(Path("infra/recipes/dpo").glob("*-cpu.yaml")):
        _, training, model = script.parse_recipe(["--config", str(recipe), *base])
        assert model.use_peft is True and training.output_dir == "out", recipe
    tiny = ["--config", str(TINY_RECIPE), *base]
    override = rf"override --{{key}} of recipe {TINY_RECIPE}: "
    with pytest.raises(
        ValueError, match=override.format(key="lora_rr") + r"unknown key 'lora_rr' \(did you mean"
    ):
        script.parse_recipe([*tiny, "--lora_rr", "4"])
    with pytest.raises(
        ValueError,
        match=override.format(key="learning_rate")
        + r"key 'learning_rate' = -0.001 is out of range \(rule: > 0\)",
    ):
        script.parse_recipe([*tiny, "--learning_rate=-1e-3"])
    with pytest.raises(ValueError, match=r"key 'beta' = 0.0 is out of range \(rule: > 0\)"):
        script.parse_recipe([*tiny, "--beta", "0"])
    with pytest.raises(
        ValueError, match=r"'max_train_samples' = 0 .*rule: null or an integer >= 1"
    ):
        script.parse_recipe([*tiny, "--max_train_samples", "0"])
    listed = tmp_path / "listed.yaml"
    listed.write_text(
        TINY_RECIPE.read_text().replace("learning_rate: 1.0e-3", "learning_rate: [1]")
    )
    with pytest.raises(ValueError, match=rf"recipe {listed}: key 'learning_rate' = \[1\] is out"):
        script.parse_recipe(["--config", str(listed), *base])
    with pytest.raises(ValueError, match=r"missing required key 'dataset_path'"):
        script.parse_recipe(["--model_name_or_path", "m", "--output_dir", "out"])
    with pytest.raises(ValueError, match=r"'hal-tiny-llama'"):
        script.parse_recipe(["--config", str(TINY_RECIPE), "--dataset_path", "p"])
    for gpu_recipe in sorted(Path("infra/recipes/dpo").glob("llama-*.yaml")):  # bf16 needs a GPU
        with pytest.raises(ValueError, match=rf"recipe {gpu_recipe}: .*bf16/gpu"):
            script.parse_recipe(["--config", str(gpu_recipe), *base])
    _, training, _ = script.parse_recipe([*tiny, "--learning_rate", "5e-6"])
    assert training.learning_rate == pytest.approx(5e-6)
    # Before `hal align` reads data: no pairs yet, and the tiny model still to be built.
    hal, _, model = script.parse_recipe(["--config", str(TINY_RECIPE), "--check_only=true"])
    assert hal.dataset_path is None and model.model_name_or_path == TINY_MODEL_NAME


def test_training_script_checks_its_recipe_before_loading_anything(module_settings, tmp_path):
    """The launched script checks the recipe on its own, before the (missing) model and pairs."""
    launch = TrainingLaunch(
        recipe_file=str(TINY_RECIPE),
        overrides={
            "model_name_or_path": str(tmp_path / "missing-model"),
            "dataset_path": str(tmp_path / "missing-pairs"),
            "learning_rate": -0.1,
        },
        accelerate_config="single",
        num_processes=1,
        output_dir=str(tmp_path / "training"),
        log_file=str(tmp_path / "training.log"),
    )
    with pytest.raises(TrainingFailedError, match=r"training exited with code") as failure:
        launch_training(launch, module_settings)
    message = str(failure.value)
    assert "returned non-zero exit status 2" in message  # the script's exit code for a recipe
    assert (
        f"recipe error: override --learning_rate of recipe {TINY_RECIPE}: "
        "key 'learning_rate' = -0.1 is out of range (rule: > 0)"
    ) in message
    assert "OSError" not in message and "FileNotFoundError" not in message
    assert not Path(launch.output_dir).exists()


@pytest.mark.slow
def test_throughput_bench_runs_both_shipped_recipes_on_cpu():
    # ~2 min on 2 cores: 32 pairs per arm at 128 tokens (TRL scores every position's 49k-way
    # log-softmax on CPU, so length and pairs set the cost)
    completed = subprocess.run(
        [sys.executable, "bench/dpo_throughput.py", "--tiny", "--steps", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if re.match(r"^(paper|ours)\s", line)}
    assert rows["paper"][1] == "llama-3.2-1b-qlora-paper"
    assert rows["ours"][1] == "llama-3.2-1b-lora-fast"
    assert float(rows["paper"][3]) > 0 and float(rows["ours"][3]) > 0
    assert any(line.startswith("ratio ours / paper:") for line in lines)


def test_candidates_are_scored_by_a_judge_and_the_reward(module_settings):
    from prefect.blocks.system import Secret

    from flows.align import build_scorer
    from tests.fakes.openai_server import FakeOpenAIServer

    candidates = read_candidates.fn(
        "synthlabs/candidates_test.csv", "synthlabs/prompts_test.csv", module_settings
    ).head(8)
    Secret(value="secret-from-block").save("hal-test-judge-key", overwrite=True)
    with FakeOpenAIServer(api_key="secret-from-block") as server:
        params = AlignParams(
            judge={
                "backend": "openai",
                "model": "fake-judge",
                "base_url": server.base_url,
                "api_key_secret_block": "hal-test-judge-key",
            }
        )
        scored = score_candidates.fn(candidates, scorer=build_scorer(params, module_settings))
        first_requests = len(server.records)
        again = score_candidates.fn(candidates, scorer=build_scorer(params, module_settings))
        rerun_requests = len(server.records) - first_requests
    assert first_requests >= len(candidates)
    assert rerun_requests == 0  # served from the rating cache
    assert scored["hl"].notna().all() and scored["hl"].nunique() > 1
    assert scored["score_error"].isna().all()
    pd.testing.assert_series_equal(scored["hl"], again["hl"])
