"""MLflow Model Registry entries of hal: the reward as a pyfunc model."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

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
"""Alias of the newest registered version; ``@champion`` follows only a guarded decision."""


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
