"""A flow's parameter schema is one Prefect's run form renders as typed fields.

What the Prefect 3.9 UI does with a deployment's ``parameter_openapi_schema`` (checked in
headless Chromium by test_hal_serve.py):

- ``params: Model | None = None`` is a choice between the model and None with None picked:
  the form opens empty. ``params: Model = Model()`` opens with every field filled.
- ``anyOf`` is a choice (buttons) with the chosen model's own fields; ``oneOf``, what pydantic
  writes for a discriminated union, is a bare JSON editor.
- Descriptions are rendered as Markdown with HTML: ``<input>`` in a description is an input box.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from hal_core.settings import PROJECT_ROOT

FORM_DEPLOYMENTS = tuple(
    d["name"]
    for d in yaml.safe_load((PROJECT_ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
)


def entrypoint(name: str) -> str:
    spec = yaml.safe_load((PROJECT_ROOT / "infra" / "prefect.yaml").read_text())
    (found,) = [d["entrypoint"] for d in spec["deployments"] if d["name"] == name]
    return found


def walk(node: object, path: str = "$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


@pytest.mark.parametrize("deployment", FORM_DEPLOYMENTS)
def test_parameter_schema_renders_as_a_filled_typed_form(deployment: str) -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    # What `prefect deploy` stores (prefect/cli/deploy/_core.py): the imported flow's schema.
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint(deployment)))
    schema = parameter_schema(flow).model_dump_for_openapi()
    (params,) = schema["properties"].values()
    assert "anyOf" not in params, f"{deployment}: the form would open on None"
    model = schema["definitions"][params["$ref"].rsplit("/", 1)[1]]
    if not model.get("required"):  # every field has a default: so must the model
        assert isinstance(params.get("default"), dict), f"{deployment}: no default instance"
    for where, node in walk(schema):
        assert "oneOf" not in node, f"{deployment} {where}: oneOf renders as a JSON editor"
        description = node.get("description")
        if isinstance(description, str):
            assert not re.search(r"<\w", description), f"{deployment} {where}: {description}"
    json.dumps(schema)  # the deployment stores it as JSON


def deployed_schema(deployment: str) -> dict:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint(deployment)))
    return parameter_schema(flow).model_dump_for_openapi()


def model_of(schema: dict) -> dict:
    (params,) = schema["properties"].values()
    return schema["definitions"][params["$ref"].rsplit("/", 1)[1]]


PLAIN_TYPES = {"string", "integer", "number", "boolean", "array"}


@pytest.mark.parametrize("deployment", FORM_DEPLOYMENTS)
def test_a_form_shows_no_internal_field_and_no_none_switch_of_a_plain_type(
    deployment: str,
) -> None:
    schema = deployed_schema(deployment)
    (params,) = schema["properties"].values()
    assert "parent_run_id" not in json.dumps(params.get("default", {}))
    for where, node in walk(schema):
        assert "parent_run_id" not in node.get("properties", {}), f"{deployment} {where}"
        choices = node.get("anyOf") or []
        if {"type": "null"} in choices and len(choices) == 2:
            (other,) = [c for c in choices if c != {"type": "null"}]
            assert other.get("type") not in PLAIN_TYPES, f"{deployment} {where}: a None switch"


def test_rate_form_requires_the_input_and_picks_a_judge_preset_defaulting_to_local() -> None:
    from hal_core.judges.presets import preset_names

    model = model_of(deployed_schema("rate-dialogues"))
    assert model["required"] == ["input_file"]  # the only field without a sensible default
    judge = model["properties"]["judge"]
    assert judge["enum"] == preset_names() and judge["default"] == "local"
    assert {"local", "openai-gpt-5", "recorded-gpt-5", "vllm-local"} <= set(judge["enum"])
    # a plain box, empty = the default behaviour
    assert model["properties"]["output_file"]["type"] == "string"
    assert "default" not in model["properties"]["output_file"]


def form_inputs(node: dict, value: object, definitions: dict) -> int:
    """The inputs a form opened on ``value`` shows (a choice: the branch the value takes)."""
    if "$ref" in node:
        node = {**definitions[node["$ref"].rsplit("/", 1)[1]], **node}
        node.pop("$ref")
    if "anyOf" in node:
        taken = [c for c in node["anyOf"] if (c.get("type") == "null") == (value is None)]
        return form_inputs(taken[0], value, definitions)
    if "properties" in node:
        values = value if isinstance(value, dict) else {}
        return sum(
            form_inputs(sub, values.get(key), definitions)
            for key, sub in node["properties"].items()
        )
    return 0 if node.get("type") == "null" else 1


def test_pipeline_form_is_a_short_section_per_stage() -> None:
    from flows.pipeline import PipelineParams

    schema = deployed_schema("cpu")
    (params,) = schema["properties"].values()
    model = model_of(schema)
    sections = {
        name for name, node in model["properties"].items() if name not in ("stages", "use_cache")
    }
    assert sections == set(PipelineParams.model_fields) - {"stages", "use_cache", "parent_run_id"}
    for name in sections:
        node = model["properties"][name]
        shown = [c for c in node.get("anyOf", [node]) if c.get("type") == "object"]
        assert len(shown) == 1 and "$ref" not in shown[0], f"{name}: not an inline section"
        assert len(shown[0]["properties"]) <= 6, f"{name}: {list(shown[0]['properties'])}"
    # inputs set by the pipeline are not in it
    rate = model["properties"]["rate_dialogues"]["properties"]
    assert not {"input_file", "judge", "questionnaire_file"} & set(rate)
    assert form_inputs(params, params["default"], schema["definitions"]) <= 40
    # the hidden fields keep their defaults: the form's default still validates
    assert PipelineParams.model_validate(params["default"]) == PipelineParams()
