"""Decoding the service's answers (msgpack or JSON) and turning error statuses into errors;
shared by the SDK's Client and the endpoint agent."""

from __future__ import annotations

from typing import Any

import httpx

from . import errors
from .protocol import JSON, MSGPACK, unpackb

STATUS_ERRORS: dict[int, type[errors.ServiceError]] = {
    401: errors.AuthError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    413: errors.PayloadTooLarge,
}


def decode(response: httpx.Response) -> Any:
    """The body of a success; for an error status, raise the matching ServiceError
    (``RateLimited`` carries Retry-After)."""
    ctype = response.headers.get("Content-Type", "")
    if ctype.startswith(MSGPACK):
        data = unpackb(response.content)
    elif ctype.startswith(JSON):
        data = response.json()
    else:
        data = response.content
    if response.status_code < 400:
        return data
    message = data.get("message", str(data)) if isinstance(data, dict) else str(data)
    code = data.get("error") if isinstance(data, dict) else None
    if response.status_code == 429:
        raise errors.RateLimited(429, message, code,
                                 float(response.headers.get("Retry-After", "1")))
    cls = STATUS_ERRORS.get(response.status_code, errors.ServiceError)
    raise cls(response.status_code, message, code)
