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
