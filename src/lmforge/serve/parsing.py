"""A request body to a request model: nesting depth first (without recursion), then JSON, then
the pydantic model; every failure a 400 in OpenAI's shape naming the field.

The depth check comes before `json.loads`, whose recursion a body of 100,000 nested brackets
would exhaust (a RecursionError: a 500 and a traceback); no OpenAI request nests deeper than a
few levels, so MAX_DEPTH leaves room to spare.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from lmforge.serve.protocol import APIError

MAX_DEPTH = 64
RequestModel = TypeVar("RequestModel", bound=BaseModel)

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `raw` (brackets inside strings do not
    count); a loop, not recursion, so any depth is measured safely."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def read_json(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise APIError(
            400, f"the request body nests {depth} levels deep; at most {MAX_DEPTH} are accepted"
        )
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as error:  # ValueError: JSONDecodeError, NaN, huge ints
        raise APIError(
            400, f"the request body is not valid JSON ({error}); send a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def validate(data: dict, model: type[RequestModel]) -> RequestModel:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise invalid_field(error.errors()[0]) from None
    except RecursionError:  # not reached after the depth check; a 400 all the same
        raise APIError(400, "the request body nests too deeply") from None


def invalid_field(first: dict) -> APIError:
    location = [str(part) for part in first.get("loc", ())]
    field = ".".join(location)
    param = location[0] if location else None
    kind = first.get("type")
    if kind == "missing":
        return APIError(400, f"'{field}' is a required field", param)
    if kind == "extra_forbidden":
        return APIError(
            400,
            f"'{field}' is not a field of this API; remove it (docs/serve.md lists the fields "
            "lmforge serve answers)",
            param,
        )
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"{field}: {message}", param)
