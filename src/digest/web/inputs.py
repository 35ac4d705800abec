"""Refuse, before any route runs, request strings that no field accepts.

A NUL byte in a list slug or a filter reaches PostgreSQL as a text parameter, and the driver
fails (a 500); a lone surrogate cannot be encoded at all. JSON nested deeper than the parser's
recursion limit raises RecursionError. Each is answered here with a clean 4xx: a path parameter
with 404 (there is no such page), a query, form or JSON string with 422, deep JSON with 400.
"""

from __future__ import annotations

import json
import re
import urllib.parse

from fastapi import Request
from starlette.exceptions import HTTPException

from digest.web.errors import content_type
from digest.web.render import FORM_TYPES

_BAD = re.compile("[\x00\ud800-\udfff]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def clean(text: str) -> bool:
    return _BAD.search(text) is None


def json_clean(value: object) -> bool:
    """Every key and string in a decoded JSON value is clean (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not clean(item):
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return True


def form_clean(body: bytes, ctype: str) -> bool:
    """A form body whose fields, once decoded, are UTF-8 without NUL."""
    raw = urllib.parse.unquote_to_bytes(body.replace(b"+", b" ")) if ctype.endswith("urlencoded") else body
    if b"\x00" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def refuse_unclean_strings(request: Request) -> None:
    """A dependency of every route (see the module's docstring)."""
    if not all(clean(v) for v in request.path_params.values() if isinstance(v, str)):
        raise HTTPException(404, "There is no such page.")
    if not all(clean(k) and clean(v) for k, v in request.query_params.multi_items()):
        raise HTTPException(422, "The query string holds a character no field accepts.")
    if request.method not in _BODY_METHODS:
        return
    ctype = content_type(request)
    if ctype == "application/json":
        body = await request.body()
        try:
            decoded = json.loads(body)
        except RecursionError:
            raise HTTPException(400, "The JSON is nested too deeply.") from None
        except (ValueError, UnicodeDecodeError):
            return  # the route says what is wrong with it
        if not json_clean(decoded):
            raise HTTPException(422, "A string in the body holds a character no field accepts.")
    elif ctype in FORM_TYPES and not form_clean(await request.body(), ctype):
        raise HTTPException(422, "A field holds a character no field accepts.")
