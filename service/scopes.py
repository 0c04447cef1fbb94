"""What a token may do: its scopes, and the rule that says whether they grant a route's.

=========== ===========================================================================
``read``     see your functions, endpoints, tasks, results and task groups (every other
             scope includes it)
``submit``   register functions, submit and cancel tasks, open Dask connections
``manage``   change the sharing of, and delete, your functions and endpoints
``endpoint`` register endpoints (and so get their credentials, or rotate them)
``admin``    everything (reserved for administration through the API)
=========== ===========================================================================

A static token made without ``--scope`` has all user scopes (all but ``admin``), as tokens
did before scopes existed.
"""

from __future__ import annotations

from collections.abc import Iterable

READ = "read"
SUBMIT = "submit"
MANAGE = "manage"
ENDPOINT = "endpoint"
ADMIN = "admin"

#: Every scope, in the order the CLI lists them.
SCOPES = (SUBMIT, READ, MANAGE, ENDPOINT, ADMIN)
#: What a token has when nothing narrower was asked for.
USER_SCOPES = frozenset({SUBMIT, READ, MANAGE, ENDPOINT})


def grants(held: Iterable[str], needed: str) -> bool:
    """Whether tokens holding ``held`` may do what needs ``needed``."""
    held = set(held) & set(SCOPES)
    return needed in held or ADMIN in held or (needed == READ and bool(held))


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """``scopes`` as a sorted list; ``ValueError`` naming an unknown one."""
    out = sorted(set(scopes))
    for scope in out:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: use {', '.join(SCOPES)}")
    return out
