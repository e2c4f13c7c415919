"""Parameter models as run forms a person can fill (Prefect's UI renders their JSON schema).

What Prefect 3.9's form does with a schema, and what this module does about it:

- ``x: str | None = None`` is ``anyOf [string, null]``: a str/None switch. :class:`RunForm`
  writes it as the plain type with no default, so the form shows one box; Prefect's validation
  treats a property without a default as nullable (``preprocess_schema``), so an empty box
  (null) is still accepted, and pydantic still reads None.
- A property not in ``required`` is labelled "(Optional)". Only fields without a default are
  required, so the mark tells a person what they must fill.
- :data:`Internal` fields (set by the pipeline, never by a person) are neither in the schema nor
  serialized, so no form shows them and no stored run parameters hold them.
- A model made of sections (the pipeline: one per stage) names the fields a person sets in
  each (:attr:`RunForm.form_fields`); the form shows a section with those only, and the
  others keep the values the section's default holds (the form submits them unchanged).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

_PLAIN = ("string", "integer", "number", "boolean", "array")


class _Internal:
    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, SkipJsonSchema(), Field(exclude=True)]


Internal = _Internal
"""``Internal[T]``: a field the pipeline sets, hidden from forms and never serialized."""


def plain_nullable(node: dict[str, Any]) -> None:
    """``anyOf [T, null]`` of a plain type T becomes T in place; a None default is dropped (the
    form opens the box empty, and Prefect then accepts null). Choices between a model and None
    stay choices: they switch a whole section on or off."""
    choices = node.get("anyOf")
    if not isinstance(choices, list) or len(choices) != 2 or {"type": "null"} not in choices:
        return
    (kept,) = [choice for choice in choices if choice != {"type": "null"}]
    if kept.get("type") not in _PLAIN:
        return
    del node["anyOf"]
    node.update(kept)
    if "default" in node and node["default"] is None:
        del node["default"]


def _definition(node: dict[str, Any], handler: GetJsonSchemaHandler) -> dict[str, Any] | None:
    if "$ref" not in node:
        return None
    try:
        return handler.resolve_ref_schema(node)
    except LookupError:
        return None


def _plain_nullables(schema: dict[str, Any], handler: GetJsonSchemaHandler, seen: set) -> None:
    """:func:`plain_nullable` on every property of ``schema`` and of the models it names."""
    if id(schema) in seen:
        return
    seen.add(id(schema))
    for prop in (schema.get("properties") or {}).values():
        plain_nullable(prop)
        for node in (prop, prop.get("items") or {}, *(prop.get("anyOf") or [])):
            definition = _definition(node, handler) if isinstance(node, dict) else None
            if definition is not None:
                _plain_nullables(definition, handler, seen)
            elif isinstance(node, dict) and node.get("properties"):
                _plain_nullables(node, handler, seen)


def _section(definition: dict[str, Any], shown: Sequence[str], handler) -> dict[str, Any]:
    """An inline copy of a model's schema with only the ``shown`` fields (``a.b`` keeps field
    ``b`` of section ``a``); unknown names raise KeyError. Unlisted keys are allowed, so the
    values the form keeps for hidden fields pass validation (pydantic still checks them). No
    title: the form labels the section by its field's name."""
    own: dict[str, list[str]] = {}
    for name in shown:
        head, _, rest = name.partition(".")
        own.setdefault(head, [])
        if rest:
            own[head].append(rest)
    properties = definition.get("properties") or {}
    missing = sorted(set(own) - set(properties))
    if missing:
        raise KeyError(f"{definition.get('title')}: no fields {missing} to show in a form")
    section = {
        "type": "object",
        "properties": {name: copy.deepcopy(properties[name]) for name in own},
    }
    required = [name for name in definition.get("required", []) if name in own]
    if required:
        section["required"] = required
    for name, inner in own.items():
        if inner:
            _show_only(section["properties"], name, inner, handler)
    return section


def _show_only(properties: dict[str, Any], name: str, shown: Sequence[str], handler) -> None:
    """Property ``name`` (a model, or a model or None) becomes a section of ``shown`` fields."""
    prop = properties[name]
    definition = _definition(prop, handler)
    if definition is not None:
        del prop["$ref"]
        description = prop.get("description") or definition.get("description")
        prop.update(_section(definition, shown, handler))
        if description:
            prop["description"] = description
        return
    choices = prop.get("anyOf") or []
    for index, choice in enumerate(choices):
        definition = _definition(choice, handler)
        if definition is not None:
            choices[index] = {**_section(definition, shown, handler), "title": "on"}
        elif choice == {"type": "null"}:
            choices[index] = {"type": "null", "title": "off"}
    if not any(choice.get("title") == "on" for choice in choices):
        raise KeyError(f"{name}: not a model, so no fields of it can be picked for a form")


class RunForm(BaseModel):
    """Base of a flow's parameter model: its schema is a form without None switches, nested
    models included, and with only :attr:`form_fields` in the sections it names (see the
    module docstring)."""

    form_fields: ClassVar[Mapping[str, Sequence[str]]] = {}
    """Section -> the fields a person sets there (``a.b``: field ``b`` of ``a``); a section
    not named here shows all its fields."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        own = handler.resolve_ref_schema(json_schema)
        _plain_nullables(own, handler, set())
        for name, shown in cls.form_fields.items():
            _show_only(own["properties"], name, shown, handler)
        return json_schema
