"""A run's description says what the stage is, its headline figures, its decision and where
its Prefect flow run is."""

from __future__ import annotations

from hal_core.run_description import (
    TEMPORARY_API_NOTE,
    experiment_description,
    flow_run_url,
    headline_figures,
    prefect_link,
    run_description,
)


def test_a_reward_run_shows_its_headline_figures_rounded_and_not_the_weights():
    metrics = {"cv.accuracy.mean": 0.774712345, "n_selected": 16.0, "weight.selected.t01": 0.3}
    text = run_description("fit_reward", "fit_reward:hal32q", metrics)
    assert text.startswith("**fit_reward:hal32q**: Fits the HL reward")
    assert "| `cv.accuracy.mean` | 0.7747 |" in text
    assert "| `n_selected` | 16 |" in text
    assert "weight.selected" not in text
    assert "0.774712345" not in text


def test_a_metric_logged_per_model_counts_as_its_headline_name():
    metrics = {"policy-a/hl.gain": 0.12345, "policy-b/hl.gain": -0.5, "hl.std": 1.0}
    figures = headline_figures("evaluate", metrics)
    assert set(figures) == {"policy-a/hl.gain", "policy-b/hl.gain"}


def test_a_stage_without_a_list_shows_its_first_few_metrics():
    metrics = {f"m{i}": float(i) for i in range(10)}
    assert list(headline_figures("some_new_stage", metrics)) == ["m0", "m1", "m2", "m3"]


def test_the_decision_and_the_prefect_link_are_in_the_description():
    link = prefect_link("crimson-fox", "http://prefect:4200/runs/flow-run/abc")
    text = run_description("evaluate", "evaluate", {}, "policy not promoted", link)
    assert "Decision: policy not promoted" in text
    assert "[Prefect flow run crimson-fox](http://prefect:4200/runs/flow-run/abc)" in text
    assert TEMPORARY_API_NOTE not in text


def test_a_flow_run_on_a_temporary_api_says_where_to_find_it():
    url = flow_run_url("http://127.0.0.1:4200/", "abc")
    link = prefect_link("crimson-fox", url, temporary=True)
    assert link == (
        "[Prefect flow run crimson-fox](http://127.0.0.1:4200/runs/flow-run/abc) "
        "(ran on a temporary Prefect API; start `hal serve` to see it)"
    )


def test_a_run_outside_prefect_says_so():
    assert "Not run in a Prefect flow run." in run_description("generate", "generate", {})


def test_each_experiment_has_its_own_description_and_an_unknown_one_a_general_one():
    reward, pipeline = experiment_description("experiment_reward"), experiment_description(None)
    assert "reward" in reward and reward != pipeline
    assert "stage:role" in pipeline
