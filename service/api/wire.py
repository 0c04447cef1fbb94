"""Request parsing and response encoding: msgpack or JSON, validated by the protocol schemas."""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from fedcompute.protocol import JSON, MSGPACK, packb, unpackb
from flask import Response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M]) -> M:
    """Validate the request body (msgpack or JSON) against ``model``; 400/415 on bad input."""
    ctype = (request.mimetype or "").lower()
    data = request.get_data(cache=False)
    try:
        if ctype == MSGPACK:
            try:
                obj = unpackb(data)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
                raise BadRequest(f"malformed msgpack body: {exc}") from exc
            try:
                return model.model_validate(obj)
            except ValidationError as first:
                # The schema describes bytes as base64 strings; accept that spelling in msgpack
                # too (JSON-mode validation decodes base64; raw bytes are re-encoded for it).
                try:
                    return model.model_validate_json(json.dumps(obj, default=_json_default))
                except (ValidationError, TypeError, ValueError):
                    raise first from None
        if ctype in (JSON, "") or ctype.endswith("+json"):
            if not data:
                raise BadRequest("empty body: expected a JSON object")
            return model.model_validate_json(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from exc
    raise UnsupportedMediaType(f"unsupported Content-Type {ctype!r}: use {JSON} or {MSGPACK}")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def wants_msgpack() -> bool:
    best = request.accept_mimetypes.best_match([JSON, MSGPACK], default=JSON)
    return best == MSGPACK


def reply(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    """Encode as msgpack when the client accepts it, else JSON (bytes as base64)."""
    if wants_msgpack():
        return Response(packb(body), status=status, mimetype=MSGPACK, headers=headers)
    return Response(json.dumps(body, default=_json_default, separators=(",", ":")),
                    status=status, mimetype=JSON, headers=headers)


def within_limit(what: str, size: int, limit: int, setting: str, unit: str = "bytes") -> None:
    """413 naming the size, the limit and the setting behind it when ``size`` exceeds it."""
    if size > limit:
        raise RequestEntityTooLarge(f"{what} is {size} {unit}; the limit is {limit} {unit} "
                                    f"({setting})")
