"""The shipped infrastructure files agree with the code: images, ports, env names, entrypoints.

Docker and `docker compose` are not available here, so these files are checked as data.
"""

from __future__ import annotations

import inspect
import re
import tomllib

import prefect
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel

from hal_core.recipes import params_from_recipe
from hal_core.settings import PROJECT_ROOT, HalSettings

INFRA = PROJECT_ROOT / "infra"
DOCKER = PROJECT_ROOT / "docker"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
PREFECT_SPEC = yaml.safe_load((INFRA / "prefect.yaml").read_text())
DEPLOYMENTS = PREFECT_SPEC["deployments"]
REQUIRED_FLOWS = {
    "hal_pipeline": "flows/pipeline.py",
    "validate_data": "flows/validate_data.py",
    "derive_traits": "flows/derive_traits.py",
    "rate_dialogues": "flows/rate_dialogues.py",
    "collect_statements": "flows/collect_statements.py",
    "fit_reward": "flows/fit_reward.py",
    "train_local_judge": "flows/train_local_judge.py",
    "align": "flows/align.py",
    "generate": "flows/generate.py",
    "evaluate": "flows/evaluate.py",
}


def env_example() -> dict[str, str]:
    values = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_every_published_port_is_bound_to_localhost() -> None:
    published = {name: service.get("ports", []) for name, service in COMPOSE["services"].items()}
    assert published["prefect-server"] and published["mlflow"]
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    for name in ("prefect-db", "mlflow-db", "worker"):
        assert not published[name], f"{name} needs no published port"


def test_images_match_the_code() -> None:
    services = COMPOSE["services"]
    assert (
        services["prefect-server"]["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"
    )
    assert services["prefect-db"]["image"].startswith("postgres:")
    assert services["mlflow-db"]["image"].startswith("postgres:")
    assert "hal-tracking" in services["mlflow"]["image"]
    assert "hal-worker" in services["worker"]["image"]
    assert "hal-trainer" in services["gpu-worker"]["image"]
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    worker = (DOCKER / "Dockerfile.worker").read_text()
    trainer = (DOCKER / "Dockerfile.trainer").read_text()
    assert re.search(r"^FROM python:3\.11-slim AS worker$", worker, re.M)
    assert re.search(r"^FROM worker AS tracking$", worker, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-devel-", trainer, re.M)
    assert "flash-attn" in trainer and 'FLASH_ATTN}" = "1"' in trainer


def test_servers_use_postgres_and_served_artifacts_with_credentials_from_the_env_file() -> None:
    services = COMPOSE["services"]
    prefect_env = services["prefect-server"]["environment"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@prefect-db:5432/"
    )
    command = services["mlflow"]["command"]
    assert (
        "--backend-store-uri=postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@mlflow-db"
        in " ".join(command)
    )
    # Artifacts on the service's volume, proxied by the server: clients need no store access.
    (destination,) = [
        c.split("=", 1)[1] for c in command if c.startswith("--artifacts-destination")
    ]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["mlflow"]["volumes"]}
    assert mounts[destination] in COMPOSE["volumes"]
    assert "--serve-artifacts" in command
    tracking = (DOCKER / "Dockerfile.worker").read_text().split("AS tracking")[1]
    assert f"mkdir -p {destination}" in tracking and "chown -R hal" in tracking
    assert '--constraint docker/requirements.lock "psycopg[binary]"' in tracking
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    text = (INFRA / "compose.yaml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = env_example()
    assert referenced - set(example) == set(), "variables missing from infra/.env.example"
    assert set(example) - referenced == set(), "infra/.env.example sets unused variables"
    assert "POSTGRES_PASSWORD" in referenced
    assert ".env" in (INFRA / ".gitignore").read_text().split()


def test_images_copy_every_package_and_script_the_project_runs() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in included}
    assert "hal_cli" in packages
    for dockerfile in ("Dockerfile.worker", "Dockerfile.trainer"):
        copied = set(re.findall(r"^COPY (\S+) \1$", (DOCKER / dockerfile).read_text(), re.M))
        missing = sorted((packages | {"scripts", "infra"}) - copied)
        assert not missing, f"docker/{dockerfile} does not copy {missing}"


def test_worker_environment_names_are_settings_the_code_reads() -> None:
    fields = {f"HAL_{name.upper()}" for name in HalSettings.model_fields}
    for service in ("worker", "gpu-worker"):
        env = COMPOSE["services"][service]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        for name in env:
            if name.startswith("HAL_"):
                assert name in fields | {"HAL_PROJECT_DIR"}, f"{service}: unknown setting {name}"
    pull = PREFECT_SPEC["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $HAL_PROJECT_DIR }}"
    for dockerfile in ("Dockerfile.worker", "Dockerfile.trainer"):
        text = (DOCKER / dockerfile).read_text()
        assert "HAL_PROJECT_DIR=/opt/hal" in text and "WORKDIR /opt/hal" in text


def test_images_install_cpu_torch_first_then_the_locked_project() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    worker = (DOCKER / "Dockerfile.worker").read_text()
    torch_line = worker.index(f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}")
    assert torch_line < worker.index("pip install --constraint docker/requirements.lock .")
    trainer = (DOCKER / "Dockerfile.trainer").read_text()
    assert trainer.index(torch_pin) < trainer.index(
        '--constraint docker/requirements.lock ".[gpu]"'
    )


def test_lock_pins_every_dependency_within_its_range() -> None:
    locked = {}
    for line in (DOCKER / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[name.lower().replace("_", "-")] = version
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        if name == "torch":
            assert name not in locked  # each image installs its own torch build first
            continue
        assert name in locked, f"{name} is not in docker/requirements.lock"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} vs {spec}"


def test_deployments_cover_every_stage_with_pools_and_a_weekly_refit() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule

    PrefectYamlModel.model_validate(PREFECT_SPEC)
    by_flow = {}
    for deployment in DEPLOYMENTS:
        path, _, function = deployment["entrypoint"].partition(":")
        by_flow.setdefault(function, []).append(deployment)
        assert REQUIRED_FLOWS.get(function) == path, deployment["entrypoint"]
    assert set(by_flow) == set(REQUIRED_FLOWS)
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names)), "deployment names are picked by name: keep them unique"
    pools = {d["work_pool"]["name"] for d in DEPLOYMENTS}
    assert pools == {"hal-cpu", "hal-gpu"}
    assert {d["work_pool"]["name"] for d in by_flow["align"]} == {"hal-gpu"}
    assert {d["work_pool"]["name"] for d in by_flow["hal_pipeline"]} == {"hal-cpu", "hal-gpu"}
    (refit,) = by_flow["fit_reward"]
    (schedule,) = refit["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.cron.split()[2:] == ["*", "*", "1"]  # every Monday
    for image in ("worker", "gpu-worker"):
        command = COMPOSE["services"][image]["command"]
        assert command[:2] == ["hal", "serve"] and command[-1] in pools


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in DEPLOYMENTS}))
def test_entrypoint_resolves_to_a_flow_with_one_typed_parameter_model(entrypoint: str) -> None:
    path, _, function = entrypoint.partition(":")
    if not (PROJECT_ROOT / path).is_file():
        pytest.skip(f"{path} does not exist yet (flow {function} is another issue's work)")
    from prefect.flows import Flow, load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint))
    assert isinstance(flow, Flow)
    assert flow.fn.__name__ == function
    parameters = list(inspect.signature(flow.fn).parameters.values())
    assert len(parameters) == 1, f"{entrypoint}: a flow takes one parameter model"
    annotation = inspect.get_annotations(flow.fn, eval_str=True)[parameters[0].name]
    model = next(
        (t for t in getattr(annotation, "__args__", (annotation,)) if isinstance(t, type)), None
    )
    assert model is not None and issubclass(model, BaseModel), f"{entrypoint}: {annotation}"
    assert "parent_run_id" in model.model_fields


def test_env_example_holds_placeholders_not_secrets() -> None:
    example = env_example()
    assert example["POSTGRES_PASSWORD"].startswith("change-me")


def test_multi_node_doc_names_files_that_exist() -> None:
    text = (PROJECT_ROOT / "docs" / "multi-node.md").read_text()
    named = set(
        re.findall(
            r"\b((?:infra|flows|docker|scripts)/[\w./-]+\.(?:yaml|json|py|lock|trainer))", text
        )
    )
    site_specific = {"infra/hostfile", "infra/accelerate/zero3-2nodes.yaml"}
    assert "scripts/train_dpo.py" in named and "infra/accelerate/zero3.yaml" in named
    missing = sorted(p for p in named - site_specific if not (PROJECT_ROOT / p).exists())
    assert not missing, f"docs/multi-node.md names missing files {missing}"


STAGE_RECIPES = {
    "fit_reward_glass_box.yaml": "flows.fit_reward:FitRewardParams",
    "pipeline.yaml": "flows.pipeline:PipelineParams",
    "train_local_judge_doctor_visits.yaml": "flows.train_local_judge:TrainLocalJudgeParams",
    "derive_traits.yaml": "hal_core.derivation:DerivationRecipe",
}


def test_every_stage_recipe_loads_into_its_parameter_model() -> None:
    import importlib

    shipped = {path.name for path in (INFRA / "recipes").glob("*.yaml")}
    assert shipped == set(STAGE_RECIPES), "a recipe without a model to check it against"
    for name, target in STAGE_RECIPES.items():
        module, _, model = target.partition(":")
        values = yaml.safe_load((INFRA / "recipes" / name).read_text())
        parameters = getattr(importlib.import_module(module), model)
        assert parameters.model_config.get("extra") == "forbid", f"{model} accepts unknown keys"
        params_from_recipe(parameters, values)  # raises on an unknown key or a wrong type
        if not module.startswith("flows."):
            continue  # a method recipe (like infra/recipes/dpo/) spells out every setting
        # a stage recipe holds only what differs from the defaults
        defaults = parameters().model_dump(mode="json") if _has_defaults(parameters) else {}
        repeated = [key for key, value in values.items() if defaults.get(key) == value]
        assert not repeated, f"{name} repeats defaults: {repeated}"


def _has_defaults(model) -> bool:
    from pydantic import ValidationError

    try:
        model()
    except ValidationError:
        return False
    return True


def test_the_doctor_visit_judge_recipe_is_the_pipelines_training_judge() -> None:
    from flows.pipeline import PipelineParams
    from flows.train_local_judge import TrainLocalJudgeParams

    values = yaml.safe_load(
        (INFRA / "recipes" / "train_local_judge_doctor_visits.yaml").read_text()
    )
    recipe = params_from_recipe(TrainLocalJudgeParams, values)
    pipeline = PipelineParams().train_local_judge
    assert recipe.questionnaire == pipeline.questionnaire == "hal16q"
    assert recipe.features == pipeline.features and recipe.regressor == pipeline.regressor


def test_every_shipped_judge_config_loads_and_the_recorded_one_replays(data_dir) -> None:
    import pandas as pd

    from hal_core.dialogue import SpeakerTags
    from hal_core.judges import build_judge, load_judge_config
    from hal_core.judging import Game
    from hal_core.questionnaire import Questionnaire

    configs = {path.name: load_judge_config(path) for path in (INFRA / "judges").glob("*.yaml")}
    assert {"openai-gpt-5.yaml", "vllm-local.yaml", "recorded-gpt-5.yaml"} <= set(configs)
    judge = build_judge(configs["recorded-gpt-5.yaml"], data_dir=data_dir)
    games = pd.read_csv(data_dir / "turing/games.csv").head(10)
    hal32q = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    witnesses = [*games["conversation_A_transcript"], *games["conversation_B_transcript"]]
    ratings = judge.rate(witnesses, hal32q, SpeakerTags.turing())
    assert all(result.ok for result in ratings)
    asked = [
        Game(
            game_id=str(row.game_id),
            transcript_a=row.conversation_A_transcript,
            transcript_b=row.conversation_B_transcript,
        )
        for row in games.itertuples()
    ]
    proposals = judge.propose_statements(asked, SpeakerTags.turing())
    assert all(proposal.ok for proposal in proposals)
