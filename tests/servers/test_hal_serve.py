"""`hal serve` as a user runs it: URLs, workers, a deployment run, the run forms, a clean stop.

`hal serve` runs ``prefect server start`` and an MLflow UI on 127.0.0.1, creates the process
work pools, applies deployments of ``infra/prefect.yaml`` and starts workers; the flows write to
the local MLflow store that the MLflow UI serves. Runs are triggered through the Prefect API and
through the Prefect UI's run form in headless Chromium (Debian's package, driven by Playwright),
and read back through both servers.

The tests share one ``hal serve`` (module fixture) and run in file order: the last one stops it.
Screenshots go to the test's tmp folder, and also to ``HAL_SCREENSHOT_DIR`` when it is set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from hal_cli.serving import GPU_POOL, has_gpu
from tests.servers.conftest import Served, wait_for_flow_run
from tests.servers.processes import missing, require_module, wait_until

DEPLOYMENT = "weekly-refit"  # flows/fit_reward.py:fit_reward in infra/prefect.yaml
CUSTOM = {"params": {"reward": {"paper_cv_seeds": [57], "cv_folds": 5}, "alias": "server-test"}}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def prefect_client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.prefect_api, timeout=30)


def deployment(prefect: httpx.Client, name: str) -> dict:
    (found,) = prefect.post(
        "/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}
    ).json()
    return found


def online_workers(prefect: httpx.Client, pool: str) -> list[dict]:
    workers = prefect.post(f"/work_pools/{pool}/workers/filter", json={})
    assert workers.status_code == 200, workers.text
    return [w for w in workers.json() if w["status"] == "ONLINE"]


def mlflow_run_of(served: Served, flow_run_id: str) -> dict:
    """The MLflow run a flow run wrote, found by its ``prefect.flow_run_id`` tag."""
    mlflow = httpx.Client(base_url=f"{served.mlflow_url}/api/2.0/mlflow", timeout=30)
    experiment = mlflow.get(
        "/experiments/get-by-name", params={"experiment_name": "hal-pipeline"}
    ).json()["experiment"]
    (run,) = mlflow.post(
        "/runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        },
    ).json()["runs"]
    return run


def test_serve_prints_both_urls_and_serves_only_the_pools_this_machine_can(
    hal_serve: Served,
) -> None:
    assert hal_serve.prefect_ui == f"http://127.0.0.1:{hal_serve.port}"
    assert hal_serve.mlflow_url == f"http://127.0.0.1:{hal_serve.mlflow_port}"
    # The UI calls its own API, not the default port's.
    ui_settings = httpx.get(f"{hal_serve.prefect_ui}/ui-settings", timeout=30).json()
    assert ui_settings["api_url"] == hal_serve.prefect_api
    assert "<html" in httpx.get(hal_serve.prefect_ui, timeout=30).text.lower()
    assert "<html" in httpx.get(hal_serve.mlflow_url, timeout=30).text.lower()

    prefect = prefect_client(hal_serve)
    expected = {"hal-cpu"} | ({GPU_POOL} if has_gpu() else set())
    wait_until(lambda: online_workers(prefect, "hal-cpu"), 300, "the hal-cpu worker", [])
    pools = {p["name"] for p in prefect.post("/work_pools/filter", json={}).json()}
    assert pools == {"hal-cpu", GPU_POOL}  # both pools exist for the deployments
    with_workers = {pool for pool in pools if online_workers(prefect, pool)}
    assert with_workers == expected
    tree = psutil.Process(hal_serve.service.process.pid).children(recursive=True)
    started = {
        c.cmdline()[c.cmdline().index("--pool") + 1] for c in tree if "worker" in c.cmdline()
    }
    assert started == expected
    if GPU_POOL not in expected:
        assert f"not started: {GPU_POOL}: no GPU here" in hal_serve.printed()
    print(f"hal serve ready in {hal_serve.ready_s:.0f} s; workers on {sorted(started)}")


def test_deployment_run_with_custom_parameters_completes(hal_serve: Served) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect = prefect_client(hal_serve)
    spec = deployment(prefect, DEPLOYMENT)
    assert spec["entrypoint"] == "flows/fit_reward.py:fit_reward"
    assert spec["work_pool_name"] == "hal-cpu"
    assert [s["schedule"]["cron"] for s in spec["schedules"]] == ["0 3 * * 1"]

    with temporary_settings(updates={PREFECT_API_URL: hal_serve.prefect_api}):
        flow_run = run_deployment(spec["id"], parameters=CUSTOM, timeout=0, as_subflow=False)
    state = wait_for_flow_run(prefect, str(flow_run.id), hal_serve)
    assert state["parameters"] == CUSTOM
    assert state["work_pool_name"] == "hal-cpu"

    run = mlflow_run_of(hal_serve, str(flow_run.id))
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    # The custom parameters reached the flow run in the worker's subprocess.
    assert (params["paper_cv_seeds"], params["cv_folds"]) == ("[57]", "5")
    assert run["info"]["status"] == "FINISHED"
    assert 0.7 < metrics["cv.accuracy.mean"] < 0.85
    assert metrics["n_selected"] == 16
    mlflow = httpx.Client(base_url=f"{hal_serve.mlflow_url}/api/2.0/mlflow", timeout=30)
    alias = mlflow.get(
        "/registered-models/alias", params={"name": "hal-reward", "alias": "server-test"}
    ).json()["model_version"]
    assert alias["run_id"] == run["info"]["run_id"]


def alias_of(flow_run: dict) -> str | None:
    return (flow_run["parameters"].get("params") or {}).get("alias")


def property_of(page, label: str):
    """The form property labelled ``label`` (the form adds " (Optional)" to most)."""
    name = re.compile(rf"^{re.escape(label)}( \(Optional\))?$")
    own_label = page.locator(":scope > .p-label__header .schema-form-property__label")
    return page.locator(".schema-form-property").filter(has=own_label.filter(has_text=name)).first


def control(prop):
    """The text box or number box of a property (not of the properties nested in it)."""
    return prop.locator(":scope > .p-label__body").locator("textarea, input").first


def text_value(prop) -> str:
    return control(prop).input_value()


def label_of(prop) -> str:
    return prop.locator(":scope > .p-label__header .schema-form-property__label").inner_text()


def assert_no_none_switch_nor_internal_field(page) -> None:
    """No str/None (or int/None...) buttons, and no field only the pipeline sets."""
    for plain in ("str", "int", "float", "bool", "list"):
        assert page.get_by_role("button", name=plain, exact=True).count() == 0, plain
    assert page.get_by_text(re.compile("Parent Run Id")).count() == 0


def test_run_forms_show_typed_fields_with_defaults_and_submit_a_run(
    hal_serve: Served, tmp_path: Path
) -> None:
    # Never `playwright install` (it downloads browsers): the test drives Debian's chromium.
    sync_api = require_module("playwright.sync_api", "pip install playwright")
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} is absent (apt-get install chromium)")
    shots = tmp_path / "screens"
    shots.mkdir()
    prefect = prefect_client(hal_serve)
    refit, rate = deployment(prefect, DEPLOYMENT), deployment(prefect, "rate-dialogues")
    pipeline = deployment(prefect, "cpu")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.new_page()
        page.set_default_timeout(120_000)

        # fit-reward: the parameter model opens filled with its defaults, field by field.
        page.goto(f"{hal_serve.prefect_ui}/deployments/deployment/{refit['id']}/run")
        ratings = property_of(page, "Ratings File")
        ratings.scroll_into_view_if_needed()
        assert text_value(ratings) == "turing/ratings32_gpt-5.csv"
        assert text_value(property_of(page, "Questionnaire File")) == "questionnaires/hal32q.json"
        assert text_value(property_of(page, "Cv Folds")) == "10"
        assert text_value(property_of(page, "Selection Threshold")) == "0.2"
        assert "fail" in property_of(page, "Validation Policy").inner_text()
        page.screenshot(path=shots / "fit-reward-form.png")

        # rate-dialogues: what must be filled is marked, the judge is a preset, no None switch.
        page.goto(f"{hal_serve.prefect_ui}/deployments/deployment/{rate['id']}/run")
        inputs = property_of(page, "Input File")
        inputs.scroll_into_view_if_needed()
        assert label_of(inputs) == "Input File"  # required: no "(Optional)"
        assert label_of(property_of(page, "Output File")) == "Output File (Optional)"
        judge = property_of(page, "Judge")
        judge.scroll_into_view_if_needed()
        assert judge.locator(".cm-editor, .code-mirror").count() == 0  # no bare JSON editor
        assert "local" in judge.locator(":scope > .p-label__body").inner_text()
        for backend in ("OpenAIJudgeConfig", "HFJudgeConfig", "RecordedJudgeConfig"):
            assert page.get_by_text(backend, exact=True).count() == 0
        choice = judge.locator(":scope > .p-label__body")
        assert choice.locator(".p-select-button__value").inner_text() == "local"
        # (the presets it lists are the schema's enum: test_run_form_schemas.py checks them)
        page.screenshot(path=shots / "rate-dialogues-judge-preset.png")
        assert_no_none_switch_nor_internal_field(page)
        # Descriptions are text: none turned into an input box by angle brackets.
        assert page.locator(".p-label__description :is(input, textarea, select)").count() == 0
        output = property_of(page, "Output File").locator(".p-label__description").first
        assert "HAL_HOME/ratings/" in output.inner_text()

        # The pipeline: one short section per stage, nothing the pipeline sets itself.
        page.goto(f"{hal_serve.prefect_ui}/deployments/deployment/{pipeline['id']}/run")
        property_of(page, "Validate Data").wait_for()
        for stage in ("Validate Data", "Derive Traits", "Fit Reward", "Train Local Judge",
                      "Generate", "Rate Dialogues", "Align", "Evaluate"):  # fmt: skip
            assert property_of(page, stage).is_visible(), stage
        boxes = page.locator(".schema-form-property textarea")
        assert "smollm2-135m-instruct" in [box.input_value() for box in boxes.all()]  # a default
        for set_by_the_pipeline in ("Input File", "Model Name Or Path", "Generated Files"):
            assert property_of(page, set_by_the_pipeline).count() == 0, set_by_the_pipeline
        assert_no_none_switch_nor_internal_field(page)
        form_inputs = page.locator(".schema-form-property :is(input, textarea, select)").count()
        assert 0 < form_inputs <= 60, f"{form_inputs} inputs in the pipeline form"
        page.screenshot(path=shots / "pipeline-form.png", full_page=True)
        print(f"pipeline form: {form_inputs} inputs")

        # Submit a fit-reward run from the form with two typed changes.
        page.goto(f"{hal_serve.prefect_ui}/deployments/deployment/{refit['id']}/run")
        control(property_of(page, "Cv Folds")).fill("5")
        control(property_of(page, "Alias")).fill("browser-form")
        page.screenshot(path=shots / "fit-reward-form-filled.png", full_page=True)
        page.get_by_role("button", name="Submit").click()
        submitted: list[dict] = []

        def from_the_form() -> bool:
            runs = prefect.post(
                "/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [refit["id"]]}}},
            ).json()
            submitted[:] = [r for r in runs if alias_of(r) == "browser-form"]
            return bool(submitted)

        wait_until(from_the_form, 120, "the flow run submitted from the form", [hal_serve.service])
        (flow_run,) = submitted
        flow_run_id = flow_run["id"]
        assert flow_run["parameters"]["params"]["reward"]["cv_folds"] == 5
        wait_for_flow_run(prefect, flow_run_id, hal_serve)

        # Its MLflow run links to the flow run, and the flow run back to it: follow both.
        run = mlflow_run_of(hal_serve, flow_run_id)
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["prefect.flow_run_url"].startswith(hal_serve.prefect_ui)
        assert tags["prefect.flow_run_url"].endswith(flow_run_id)
        assert tags["hal.mlflow_run_url"].startswith(hal_serve.mlflow_url)
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["cv_folds"] == "5"
        page.goto(tags["hal.mlflow_run_url"])
        page.get_by_text("prefect.flow_run_url").first.wait_for()
        page.get_by_text(flow_run_id).first.wait_for()
        page.screenshot(path=shots / "mlflow-run-with-prefect-link.png")
        # The run reads at a glance: a description with its figures and a Prefect link that
        # can be clicked, the reviewer's plots, and Data Docs that open offline.
        note = tags["mlflow.note.content"]
        assert "cv.accuracy.mean" in note and f"({tags['prefect.flow_run_url']})" in note
        page.locator(f'a[href="{tags["prefect.flow_run_url"]}"]').first.wait_for()
        artifacts = httpx.Client(base_url=hal_serve.mlflow_url, timeout=30)
        run_id = run["info"]["run_id"]
        plots = artifacts.get(
            "/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "plots"}
        ).json()["files"]
        names = {Path(f["path"]).name for f in plots}
        assert {"trait_weights.png", "roc_grouped_cv.png", "calibration_grouped_cv.png"} <= names
        docs_path = "validation/turing/ratings32_gpt-5/validation_result.html"
        docs = artifacts.get("/get-artifact", params={"path": docs_path, "run_uuid": run_id})
        assert docs.status_code == 200, docs_path
        outside: list[str] = []
        page.route("**/*", lambda route: (outside.append(route.request.url), route.abort()))
        page.set_content(docs.text)
        shown = page.inner_text("body")
        assert "expect_column_values_to_be_unique" in shown and "passed" in shown
        assert outside == []  # nothing fetched from a CDN or anywhere else
        page.screenshot(path=shots / "data-docs-offline.png", full_page=True)
        page.unroute("**/*")
        page.goto(tags["prefect.flow_run_url"])
        page.get_by_text("Completed").first.wait_for()
        page.get_by_text(run["info"]["run_id"]).first.wait_for()  # the log line with the link
        page.screenshot(path=shots / "flow-run-completed.png")
        browser.close()

    if os.environ.get("HAL_SCREENSHOT_DIR"):
        target = Path(os.environ["HAL_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, target / shot.name)
    print(f"screenshots in {shots}")


def test_serve_stops_every_process_on_sigterm(hal_serve: Served) -> None:
    """Last test of the module: it stops the fixture's ``hal serve``."""
    serve = hal_serve.service.process
    tree = psutil.Process(serve.pid).children(recursive=True)
    assert len(tree) >= 3  # Prefect server, MLflow UI, a worker (and their children)
    sent = time.monotonic()
    serve.send_signal(signal.SIGTERM)
    # It stops on its own: the fixture's SIGKILL comes only after 30 s (it used to take 60 s).
    serve.wait(timeout=30)
    stopped_s = time.monotonic() - sent
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    assert serve.returncode == 0
    (said,) = re.findall(r"^stopped in .*$", hal_serve.printed(), re.M)
    print(f"hal serve and {len(tree)} processes stopped {stopped_s:.1f} s after SIGTERM ({said})")
