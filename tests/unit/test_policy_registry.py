"""``hal-policy`` versions are MLflow models: an MLmodel with a signature (a ``prompt`` column
in, a ``text`` column out) beside the checkpoint's own files, loadable as a generator."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hal_core.evaluation import PromotionDecision
from hal_core.tiny_model import TinyModelSpec, save_tiny_model

CORPUS = [
    "P: hi doc, my knee hurts when i climb stairs\nD: Since when?",
    "P: honestly its been like two weeks lol\nD: Any swelling?",
    "Write a doctor's visit for a patient with a cough.",
] * 6
SPEC = TinyModelSpec(vocab_size=384, hidden_size=32, intermediate_size=64, seed=11)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (untrained) over a tiny Llama; its config names the base folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("policy")
    base = save_tiny_model(root / "base", CORPUS, SPEC)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    folder = root / "checkpoints" / "epoch-1"
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


@pytest.fixture()
def registered(tmp_path: Path, adapter: Path):
    from tasks.registry import register_policy

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("policy", artifact_location=(tmp_path / "a").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        version = register_policy.fn(
            run.info.run_id,
            adapter,
            "hal-policy-test",
            "champion",
            PromotionDecision(promote=True, reasons=["gain significant"]),
            {"base_model": "tiny-base", "epoch": 1, "hl_gain": 0.5},
            "a tiny adapter",
        )
    yield version
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_the_registered_policy_has_a_prompt_in_text_out_signature(registered, adapter) -> None:
    info = mlflow.models.get_model_info(f"models:/hal-policy-test/{registered}")
    signature = info.signature
    assert signature is not None
    assert signature.inputs.input_names() == ["prompt"]
    assert [spec.type.name for spec in signature.inputs.inputs] == ["string"]
    assert signature.outputs.input_names() == ["text"]
    params = {spec.name: spec.default for spec in signature.params.params}
    assert params["max_new_tokens"] == 256 and set(params) >= {"temperature", "seed"}
    assert "python_function" in info.flavors
    assert (
        info.metadata["base_model"]
        == json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    )

    # the version's folder is still the adapter itself, with its MLmodel beside it
    folder = Path(mlflow.artifacts.download_artifacts("models:/hal-policy-test@champion"))
    assert (folder / "adapter_config.json").is_file() and (folder / "MLmodel").is_file()
    version = MlflowClient().get_model_version("hal-policy-test", registered)
    assert version.tags["decision"] == "promote" and version.tags["epoch"] == "1"


def test_the_registered_policy_loads_as_a_generator_of_replies(registered) -> None:
    model = mlflow.pyfunc.load_model("models:/hal-policy-test@champion")
    prompts = pd.DataFrame({"prompt": ["Write a doctor's visit.", "hi doc"]})
    replies = model.predict(prompts, params={"max_new_tokens": 4, "seed": 1})
    assert list(replies.columns) == ["text"] and len(replies) == 2
    assert all(isinstance(text, str) for text in replies["text"])
    again = model.predict(prompts, params={"max_new_tokens": 4, "seed": 1})
    assert again["text"].tolist() == replies["text"].tolist()  # seeded: same request, same text
    with pytest.raises(Exception, match="prompt"):
        model.predict(pd.DataFrame({"messages": ["hi"]}))
