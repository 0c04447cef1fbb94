"""Property-based fuzzing of every operation of the live service's ``/openapi.json`` with
schemathesis, without credentials and with the right ones (a user's static token, or an OpenID
Connect access token from the test provider; an endpoint credential for the agent API), with
valid and invalid data, as JSON and msgpack: never a 5xx,
and every response conforms to the document (status code, content type, headers, body).

Driven through schemathesis' Python API (``APIOperation.as_strategy`` + hypothesis): its lazy
pytest loader (``schemathesis.pytest.from_fixture``) does not work with this pytest (9.x).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fedcompute.protocol import packb
from fedcompute.service.openapi import openapi_document
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.agent_api import FakeAgent

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 25


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx, value):
    try:
        return None if value is None else packb(value)
    except OverflowError:  # an integer beyond 64 bits: not expressible in msgpack at all
        reject()


def _operations() -> list[tuple[str, str]]:
    doc = openapi_document()  # the same document the live service serves (checked below)
    return [(method.upper(), path) for path, item in doc["paths"].items() for method in item]


@pytest.fixture(scope="module")
def live_schema(sec):
    schema = schemathesis.openapi.from_url(f"{sec.url}/openapi.json")
    assert schema.raw_schema["paths"].keys() == openapi_document()["paths"].keys()
    return schema


@pytest.fixture(scope="module")
def oidc_alice(sec):
    """alice signed in through the OIDC provider (the token is refreshed when due)."""
    return sec.idp.client(sec.url, "alice")


@pytest.fixture(scope="module")
def fuzz_credential(sec):
    """An endpoint of alice's whose agent API the fuzzer may call (a session is connected)."""
    reg = sec.alice().register_endpoint("fuzzed")
    FakeAgent(sec.url, reg["credential"]).connect()
    return reg["credential"]


def _mutates_authorization(case) -> bool:
    """A negative case whose only invalid part is its Authorization header: the test sets that
    header itself, so the case would go out valid (and be "accepted")."""
    data = case.meta.phase.data if case.meta else None
    if data is None:
        return False
    names = {data.parameter, *(m.parameter for m in getattr(data, "mutations", ()))}
    return "Authorization" in names or "authorization" in names


def _fuzz(operation, mode: GenerationMode, headers: dict, failures: list, calls: Counter) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        if case.headers:  # never a generated Authorization header
            case.headers.pop("Authorization", None)
        if mode is GenerationMode.NEGATIVE and headers and _mutates_authorization(case):
            reject()
        calls[mode.value] += 1
        try:
            case.call_and_validate(headers=headers, timeout=60)
        except AssertionError as exc:  # schemathesis' FailureGroup
            failures.append(f"[{mode.value}] {exc}")
            raise

    try:
        run()
    except AssertionError:
        pass  # collected above
    except Unsatisfiable:
        # No parameters and no body: there is no invalid input to make.
        raw = operation.definition.raw
        assert mode is GenerationMode.NEGATIVE
        assert not raw.get("parameters") and "requestBody" not in raw


def _cases() -> list[tuple[str, str, str]]:
    """Each operation anonymous and with credentials; user operations also as an OIDC user
    (endpoints have credentials, not OIDC logins)."""
    out = []
    for method, path in _operations():
        auths = ["with-credentials", "anonymous"]
        if not path.startswith("/v1/agent/"):
            auths.insert(1, "oidc-credentials")
        out += [(method, path, auth) for auth in auths]
    return out


@pytest.mark.parametrize(("method", "path", "auth"), _cases())
def test_operation(live_schema, sec, fuzz_credential, oidc_alice, method, path, auth):
    operation = live_schema[path][method]
    headers = {}
    if auth != "anonymous" and operation.definition.raw.get("security"):
        token = fuzz_credential if path.startswith("/v1/agent/") else (
            oidc_alice.token if auth == "oidc-credentials" else sec.stack.token)
        headers["Authorization"] = f"Bearer {token}"
    failures: list[str] = []
    calls: Counter = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _fuzz(operation, mode, headers, failures, calls)
    assert calls[GenerationMode.POSITIVE.value] > 0
    assert not failures, failures[0]
