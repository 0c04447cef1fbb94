"""TLS settings from the ``verify`` argument the SDK, the endpoint and the plugins take."""

from __future__ import annotations

import ssl


def ssl_context(verify: bool | str) -> ssl.SSLContext | None:
    """``True``: the system's default verification (None: let the library use its own);
    ``False``: no verification (self-signed test setups); a path: that CA bundle."""
    if verify is True:
        return None
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=verify)
