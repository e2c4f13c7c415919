"""MLflow Model Registry entries of hal: the reward as a pyfunc model, the policy as a generator.

A model version is a ``str`` everywhere in hal (``"3"``), as MLflow's REST API writes it; the
SQL store hands back ``int``, so every version read from MLflow goes through ``str`` here.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType
from prefect import task
from prefect.cache_policies import NO_CACHE

from hal_core.evaluation import PromotionDecision
from hal_core.policy_serving import GENERATION_PARAMS, PROMPT_COLUMN, TEXT_COLUMN, base_model_of
from hal_core.reward import HLReward

REWARD_MODEL_NAME = "hal-reward"
REWARD_ARTIFACT_KEY = "reward"


class RewardPyfunc(mlflow.pyfunc.PythonModel):
    """Scores a DataFrame with one column per trait id; returns HL scores.

    Any reward kind (linear or shape) loads from its JSON; the reward checks the ratings
    (numbers on the scale, none missing) and names the row and column of a bad one.
    """

    def load_context(self, context) -> None:
        self.reward = HLReward.load(context.artifacts[REWARD_ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return pd.Series(self.reward.score(model_input), name="hl", index=model_input.index)


CHALLENGER_ALIAS = "challenger"
"""Alias of the newest version registered after its check; ``@champion`` follows only a
guarded decision."""

NOT_HELD = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
"""What MLflow answers for a model that does not exist, and for an alias nobody holds."""


def alias_holder(name: str, alias: str) -> str | None:
    """The version that holds ``name@alias``; None when the model or the alias does not exist
    (any other error, a store that cannot be reached, is raised: it is not "no champion")."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in NOT_HELD:
            return None
        raise


def run_version(name: str, run_id: str) -> str | None:
    """The newest version of ``name`` that ``run_id`` registered, if any."""
    found = MlflowClient().search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    return str(max(int(v.version) for v in found)) if found else None


def reward_signature(reward: HLReward) -> ModelSignature:
    """One required column per trait id. Their type is ``any``: MLflow refuses int64 for a
    ``double`` column (and float for ``long``), while ratings arrive as either; the reward's
    own check of every value gives the clearer error."""
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), trait_id) for trait_id in reward.trait_ids]),
        outputs=Schema([ColSpec("double", "hl")]),
    )


def reward_input_example(reward: HLReward) -> pd.DataFrame:
    """One witness rated at the middle of the scale on every trait the reward reads."""
    middle = (reward.scale[0] + reward.scale[1]) // 2
    return pd.DataFrame([dict.fromkeys(reward.trait_ids, middle)])


def log_reward_model(
    reward: HLReward, reward_path: str, registered_name: str | None, alias: str | None
) -> str | None:
    """Log the reward as a pyfunc model in the active run; register and alias it if asked."""
    info = mlflow.pyfunc.log_model(
        name="reward_model",
        python_model=RewardPyfunc(),
        artifacts={REWARD_ARTIFACT_KEY: reward_path},
        signature=reward_signature(reward),
        input_example=reward_input_example(reward),
        registered_model_name=registered_name,
        pip_requirements=["mlflow", "pandas", "numpy", "scikit-learn", "pydantic"],
        metadata={
            "reward_version": reward.version,
            "reward_kind": reward.kind,
            "trait_ids": reward.trait_ids,
        },
    )
    if registered_name is None:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(registered_name, version, "reward_version", reward.version)
    client.set_model_version_tag(registered_name, version, "reward_kind", reward.kind)
    if alias:
        client.set_registered_model_alias(registered_name, alias, version)
    return version


POLICY_ARTIFACT_PATH = "policy"
POLICY_REQUIREMENTS = ("mlflow", "pandas", "pydantic", "torch", "transformers", "peft")
"""What loading a registered policy needs (its ``requirements.txt``)."""
POLICY_DESCRIPTION = (
    "Policies aligned for human-likeness by hal (DPO + LoRA). Each version is one evaluated "
    "checkpoint folder (a PEFT adapter, or a full checkpoint) logged by an `evaluate` run; "
    "load the base model named by its `base_model` tag and apply the adapter "
    "(`mlflow.artifacts.download_artifacts('models:/{name}@{alias}')`), or load it as a "
    "generator (`mlflow.pyfunc.load_model('models:/{name}@{alias}')`: a `prompt` column in, a "
    "`text` column out). `@{alias}` moves only "
    "when the HL gain under the training judge is significant (one-sided paired p < "
    "significance), the second judge's gain is not negative and no guard against reward hacking "
    "fails; each version's `decision` and `decision.reasons` tags say why."
)


def _tag_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "null"
    if value is None:
        return "null"
    return str(value)[:4900]


def policy_signature() -> ModelSignature:
    """A ``prompt`` string column in (one user message each), a ``text`` column out (one reply
    each); the sampling settings a request may change are params with their defaults."""
    params = [
        ParamSpec(name, "long" if isinstance(default, int) else "double", default)
        for name, default in GENERATION_PARAMS.items()
    ]
    return ModelSignature(
        inputs=Schema([ColSpec("string", PROMPT_COLUMN)]),
        outputs=Schema([ColSpec("string", TEXT_COLUMN)]),
        params=ParamSchema(params),
    )


def log_policy_mlmodel(
    run_id: str, checkpoint: Path, artifact_path: str, tags: Mapping[str, object]
) -> None:
    """Write the ``MLmodel`` (signature, pyfunc loader) beside the checkpoint's files, so the
    version is an MLflow model whose folder is still the checkpoint itself."""
    model = Model(
        artifact_path=artifact_path,
        run_id=run_id,
        signature=policy_signature(),
        metadata={
            "base_model": base_model_of(checkpoint) or str(tags.get("base_model", "")),
            "checkpoint": checkpoint.name,
        },
    )
    mlflow.pyfunc.add_to_model(model, loader_module="hal_core.policy_serving")
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / MLMODEL_FILE_NAME
        model.save(str(path))
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text("\n".join(POLICY_REQUIREMENTS) + "\n", encoding="utf-8")
        client.log_artifact(run_id, str(path), artifact_path)
        client.log_artifact(run_id, str(requirements), artifact_path)


@task(cache_policy=NO_CACHE)
def register_policy(
    run_id: str,
    checkpoint: Path,
    name: str,
    alias: str,
    decision: PromotionDecision,
    tags: Mapping[str, object],
    description: str,
) -> str:
    """Log the checkpoint folder to the run, register it as a version of ``name`` with tags and
    the decision, and point ``alias`` at it when the decision promotes it."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint folder to register")
    artifact_path = f"{POLICY_ARTIFACT_PATH}/{checkpoint.name}"
    client = MlflowClient()
    client.log_artifacts(run_id, str(checkpoint), artifact_path)
    log_policy_mlmodel(run_id, checkpoint, artifact_path, tags)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    summary = POLICY_DESCRIPTION.format(name=name, alias=alias)
    try:
        client.create_registered_model(name, description=summary)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_registered_model(name, description=summary)
    version_tags = {key: _tag_text(value) for key, value in tags.items()}
    version_tags["decision"] = "promote" if decision.promote else "refuse"
    version_tags["decision.reasons"] = _tag_text(" | ".join(decision.reasons))
    version = client.create_model_version(
        name, source, run_id=run_id, tags=version_tags, description=description
    )
    if decision.promote:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
