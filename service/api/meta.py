"""Version, identity and the OpenAPI document."""

from __future__ import annotations

import sys

from fedcompute import __version__
from fedcompute.protocol import API_VERSION
from flask import Blueprint, jsonify
from werkzeug.exceptions import ServiceUnavailable

from .. import oidc
from ..auth import current_principal
from ..context import fed
from ..openapi import openapi_document
from ..scopes import SCOPES
from .wire import reply

bp = Blueprint("meta", __name__)


@bp.get(f"/{API_VERSION}/version")
def version():
    return reply({"api": API_VERSION, "version": __version__,
                  "python": "{}.{}.{}".format(*sys.version_info[:3])})


@bp.get(f"/{API_VERSION}/whoami")
def whoami():
    """Who the token stands for and what it may do (any valid token: no scope needed)."""
    principal = current_principal()
    return reply({"kind": principal.kind, "name": principal.name,
                  "scopes": [s for s in SCOPES if s in principal.scopes],
                  "groups": list(principal.groups), "via": principal.via,
                  "issuer": principal.issuer, "expires": principal.expires})


@bp.get(f"/{API_VERSION}/auth/config")
def auth_config():
    """How to sign in (no token needed): the OpenID Connect issuers, for `fedcompute login`."""
    try:
        verifier = oidc.verifier(fed().settings.oidc_config)
    except ValueError as exc:
        raise ServiceUnavailable(str(exc)) from exc
    return reply(verifier.public_config() if verifier else {"issuers": [],
                                                             "static_tokens": True})


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
