"""Version, identity and the OpenAPI document."""

from __future__ import annotations

import sys

from fedcompute import __version__
from fedcompute.protocol import API_VERSION
from flask import Blueprint, jsonify

from ..auth import current_principal
from ..openapi import openapi_document
from .wire import reply

bp = Blueprint("meta", __name__)


@bp.get(f"/{API_VERSION}/version")
def version():
    return reply({"api": API_VERSION, "version": __version__,
                  "python": "{}.{}.{}".format(*sys.version_info[:3])})


@bp.get(f"/{API_VERSION}/whoami")
def whoami():
    principal = current_principal()
    return reply({"kind": principal.kind, "name": principal.name})


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
