"""What a judge must answer: JSON schemas built from the questionnaire, and strict parsing.

A reply is usable only when every trait id of the questionnaire is present exactly once with
an integer on the scale; anything else is a list of problems (used for the one repair request
and, if that fails too, as the recorded reason). Ratings are never guessed or clipped.
"""

from __future__ import annotations

import json
import re

from hal_core.questionnaire import TRAIT_ID_PATTERN, Questionnaire

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


class ReplyError(ValueError):
    """A judge's reply that cannot be used; ``problems`` says why, one rule per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def rating_reply_schema(questionnaire: Questionnaire) -> dict:
    """JSON schema of a rating reply: ``{"ratings": {trait_id: integer on the scale}}``."""
    values = list(range(questionnaire.scale.min, questionnaire.scale.max + 1))
    # the statements themselves are in the prompt; the schema only fixes ids and values
    properties = {trait.id: {"type": "integer", "enum": values} for trait in questionnaire.traits}
    return {
        "type": "object",
        "properties": {
            "ratings": {
                "type": "object",
                "properties": properties,
                "required": questionnaire.trait_ids,
                "additionalProperties": False,
            }
        },
        "required": ["ratings"],
        "additionalProperties": False,
    }


def statements_reply_schema(n_min: int = 3, n_max: int = 5) -> dict:
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["A", "B"]},
            "statements": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": n_min,
                "maxItems": n_max,
            },
        },
        "required": ["verdict", "statements"],
        "additionalProperties": False,
    }


def response_format(schema: dict, name: str, mode: str) -> dict | None:
    """The ``response_format`` argument for a chat-completions request in the given mode."""
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        }
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def _load_object(reply: str | None) -> dict:
    if reply is None or not reply.strip():
        raise ReplyError(["reply is empty"])
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ReplyError([f"reply is not valid JSON ({error.msg})"]) from error
        try:
            payload = json.loads(text[start : end + 1])
        except json.JSONDecodeError as inner:
            raise ReplyError([f"reply is not valid JSON ({inner.msg})"]) from inner
    if not isinstance(payload, dict):
        raise ReplyError([f"reply is JSON {type(payload).__name__}, not an object"])
    return payload


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_rating_reply(reply: str | None, questionnaire: Questionnaire) -> dict[str, int]:
    """Ratings by trait id from a reply, or :class:`ReplyError` listing every broken rule."""
    payload = _load_object(reply)
    ratings = payload.get("ratings")
    if ratings is None and payload and all(TRAIT_ID_PATTERN.match(str(k)) for k in payload):
        ratings = payload
    if not isinstance(ratings, dict):
        raise ReplyError(['reply has no "ratings" object'])
    low, high = questionnaire.scale.min, questionnaire.scale.max
    wanted = questionnaire.trait_ids
    problems = []
    missing = [trait_id for trait_id in wanted if trait_id not in ratings]
    if missing:
        problems.append(f"missing trait ids {missing}")
    unknown = sorted(set(map(str, ratings)) - set(wanted))
    if unknown:
        problems.append(f"unknown trait ids {unknown}")
    parsed: dict[str, int] = {}
    for trait_id in wanted:
        if trait_id not in ratings:
            continue
        value = _as_int(ratings[trait_id])
        if value is None:
            problems.append(f"{trait_id} is {ratings[trait_id]!r}, not an integer")
        elif not low <= value <= high:
            problems.append(f"{trait_id} is {value}, outside {low}-{high}")
        else:
            parsed[trait_id] = value
    if problems:
        raise ReplyError(problems)
    return parsed


def parse_statements_reply(
    reply: str | None, n_min: int = 1, n_max: int = 10
) -> tuple[str, list[str]]:
    """(verdict, statements) from a reply, or :class:`ReplyError`."""
    payload = _load_object(reply)
    problems = []
    verdict = payload.get("verdict")
    if not isinstance(verdict, str) or verdict.strip().upper() not in {"A", "B"}:
        problems.append(f'"verdict" is {verdict!r}, not "A" or "B"')
    statements = payload.get("statements")
    if not isinstance(statements, list) or not all(isinstance(s, str) for s in statements):
        problems.append('"statements" is not a list of strings')
        statements = []
    statements = [s.strip() for s in statements if s.strip()]
    if not n_min <= len(statements) <= n_max:
        problems.append(f"{len(statements)} statements, expected {n_min} to {n_max}")
    if problems:
        raise ReplyError(problems)
    return verdict.strip().upper(), statements
