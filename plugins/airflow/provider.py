"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point.

Airflow imports this module while it reads its own configuration, so it must import nothing
from Airflow (nor the rest of this package).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

_INTEGRATION = "fedcompute"


def _version() -> str:
    try:
        return version("fedcompute")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def get_provider_info() -> dict:
    """Describe the fedcompute provider: hook, connection type, operators and trigger."""
    return {
        "package-name": "fedcompute",
        "name": "fedcompute",
        "description": "Run Airflow tasks on fedcompute endpoints (federated Function-as-a-"
                       "Service): ``RemoteFunctionOperator``, ``RemoteShellOperator``, "
                       "``FederatedComputeHook`` and the deferrable ``RemoteTaskTrigger``.",
        "versions": [_version()],
        "integrations": [{
            "integration-name": _INTEGRATION,
            "external-doc-url": "https://github.com/fedcompute/fedcompute",
            "tags": ["compute"],
        }],
        "operators": [{"integration-name": _INTEGRATION,
                       "python-modules": ["fedcompute.plugins.airflow.operators"]}],
        "hooks": [{"integration-name": _INTEGRATION,
                   "python-modules": ["fedcompute.plugins.airflow.hooks"]}],
        "triggers": [{"integration-name": _INTEGRATION,
                      "python-modules": ["fedcompute.plugins.airflow.triggers"]}],
        "connection-types": [{
            "hook-class-name": "fedcompute.plugins.airflow.hooks.FederatedComputeHook",
            "hook-name": "fedcompute",
            "connection-type": "fedcompute",
            "conn-fields": {
                "endpoint_id": {
                    "label": "Default endpoint id",
                    "description": "Endpoint used when a task names none",
                    "schema": {"type": ["string", "null"]},
                },
                "verify": {
                    "label": "Verify TLS certificates",
                    "description": "false, or the path of a CA bundle",
                    "schema": {"type": ["boolean", "string", "null"], "default": True},
                },
            },
            "ui-field-behaviour": {
                "hidden-fields": ["login", "port", "schema"],
                "relabeling": {"host": "Service URL", "password": "Token"},
                "placeholders": {
                    "host": "https://compute.example.org",
                    "password": "token from `fedcompute user create` / `fedcompute login`",
                },
            },
        }],
    }
