"""JSON form fields (``params``, ``prompts``, a prompts file) as pydantic models, with every problem an
:class:`InputError` that names the field. The text is checked against size and nesting limits before it is
parsed, and numbers against a digit limit while it is parsed (a parser recurses per level, and ``int()`` of a
huge literal is slow)."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import InputError

Body = TypeVar("Body", bound=BaseModel)

MAX_FIELD_CHARS = 1_000_000  # a form JSON field; the largest valid prompts (255 objects x 128 points) fit
MAX_JSON_DEPTH = 16  # nesting levels of [ and {; the schemas need 4
MAX_INT_DIGITS = 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def check_json_limits(text: str, name: str) -> None:
    """Refuse a JSON form field over the size or nesting limits before parsing it (a parser would recurse
    once per level)."""
    if len(text) > MAX_FIELD_CHARS:
        raise InputError(f"{name} is {len(text):,} characters long, over the limit of {MAX_FIELD_CHARS:,}",
                         f"send {name} as a small JSON object; see /docs for its fields")
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise InputError(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep",
                             f"send {name} as a flat JSON object; see /docs for its fields")


def _bounded_int(digits: str, name: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(f"{name} holds a {len(digits.lstrip('-')):,}-digit number, over the limit of "
                         f"{MAX_INT_DIGITS} digits", "every number in the API fits in a few digits")
    return int(digits)


def parse_json_field(text: str, model: type[Body], name: str, example: str) -> Body:
    """A JSON form field (``params``, ``prompts``) as ``model``; every problem is an :class:`InputError`
    naming the field, with ``example`` (a JSON object) in the hint."""
    check_json_limits(text or "", name)
    try:
        data = json.loads(text or "{}", parse_int=partial(_bounded_int, name=name))
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} is not valid JSON ({exc.msg} at position {exc.pos})",
                         f"send {name} as a JSON object, e.g. {example}") from None
    if not isinstance(data, dict):
        raise InputError(f"{name} must be a JSON object", f"e.g. {example}")
    try:
        return model(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InputError(f"invalid {name}: {problems}", f"see {model.__name__} in /docs") from None
