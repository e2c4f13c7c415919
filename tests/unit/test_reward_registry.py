"""Both reward kinds behind the same pyfunc contract in the MLflow Model Registry."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hal_core.reward import HLReward, RatingsError
from tasks.registry import log_reward_model

SHAPE = HLReward(
    shapes={"t07": (-1.0, -0.5, 0.0, 0.8, 1.0), "t02": (0.6, 0.2, 0.0, -0.2, -0.6)},
    bias=0.1,
    metadata={"C": 0.01},
)


@pytest.fixture()
def registered(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("reward", artifact_location=(tmp_path / "a").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        version = log_reward_model(SHAPE, str(SHAPE.save(tmp_path / "r.json")), "hal-reward", "x")
    yield version
    mlflow.set_tracking_uri(None)


def test_glass_box_pyfunc_from_the_registry_scores_by_trait_id(registered):
    client = MlflowClient()
    version = client.get_model_version_by_alias("hal-reward", "x")
    assert str(version.version) == registered
    assert version.tags == {"reward_version": SHAPE.version, "reward_kind": "shape"}
    model = mlflow.pyfunc.load_model("models:/hal-reward@x")
    ratings = pd.DataFrame({"t02": [1, 5, 3, 4], "t07": [5, 1, 3, 2], "note": list("abcd")})
    scores = np.asarray(model.predict(ratings))  # int64 columns, an extra text column
    np.testing.assert_allclose(scores, [0.1 + 0.6 + 1.0, 0.1 - 0.6 - 1.0, 0.1, 0.1 - 0.2 - 0.5])
    np.testing.assert_allclose(model.predict(ratings[["t07", "t02"]].astype(float)), scores)
    np.testing.assert_allclose(model.predict(ratings.astype({"t07": "Int64"})), scores)
    np.testing.assert_allclose(SHAPE.score(ratings), scores)


@pytest.mark.parametrize(("value", "rule"), [(7, "off the rating scale"), ("abc", "not a number")])
def test_registered_reward_refuses_a_bad_rating_by_row_and_column(registered, value, rule):
    model = mlflow.pyfunc.load_model("models:/hal-reward@x")
    ratings = pd.DataFrame({"t02": [1, 5], "t07": [5, 1]}, dtype=object)
    ratings.loc[1, "t07"] = value
    with pytest.raises(RatingsError, match=f"row 1 column t07: .* {rule}"):
        model.predict(ratings)
