"""Per-token rate limits (``FEDCOMPUTE_RATE_LIMIT`` requests per ``FEDCOMPUTE_RATE_WINDOW``
seconds) answer 429 with ``Retry-After``; other tokens are unaffected; the SDK waits and
retries by itself."""

from __future__ import annotations

import time

import httpx
import pytest
from fedcompute import Client
from fedcompute.errors import RateLimited

from tests.reliability.agent_api import FakeAgent
from tests.reliability.helpers import running_stack

pytestmark = pytest.mark.timeout(300)

LIMIT = 20
WINDOW = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"FEDCOMPUTE_RATE_LIMIT": LIMIT, "FEDCOMPUTE_RATE_WINDOW": WINDOW}
    with running_stack(tmp_path_factory.mktemp("ratelimit"), env=env, endpoint=False) as stack:
        yield stack


def _burst(url: str, token: str, n: int) -> list[httpx.Response]:
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        return [http.get(f"{url}/v1/endpoints") for _ in range(n)]


def _fresh_window() -> None:
    """Start at the beginning of a window, so a burst is counted in one."""
    time.sleep(WINDOW - time.time() % WINDOW + 0.05)


def test_429_with_retry_after_per_token(stack):
    bob = stack.create_user("bob")
    _fresh_window()
    replies = _burst(stack.service_url, stack.token, LIMIT + 5)
    codes = [r.status_code for r in replies]
    assert codes[:LIMIT] == [200] * LIMIT and set(codes[LIMIT:]) == {429}
    refused = replies[LIMIT]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW
    assert refused.json() == {"error": "too_many_requests",
                              "message": f"rate limit exceeded; retry after {retry_after} s"}
    # Another token has its own budget.
    assert _burst(stack.service_url, bob, 1)[0].status_code == 200
    # After Retry-After, the token works again.
    time.sleep(retry_after + 0.1)
    assert _burst(stack.service_url, stack.token, 1)[0].status_code == 200


def test_sdk_raises_or_waits(stack):
    _fresh_window()
    _burst(stack.service_url, stack.token, LIMIT)
    with pytest.raises(RateLimited) as info:
        Client(stack.service_url, stack.token, retries=0).get_endpoints()
    assert info.value.status == 429 and 1 <= info.value.retry_after <= WINDOW
    # With retries (the default) the client honours Retry-After and succeeds.
    started = time.monotonic()
    assert Client(stack.service_url, stack.token).get_endpoints() == []
    assert time.monotonic() - started >= 0.5


def test_endpoint_credentials_are_not_rate_limited(stack):
    """An endpoint delivering results must never be told to back off by a user's budget."""
    reg = stack.client().register_endpoint("busy")
    agent = FakeAgent(stack.service_url, reg["credential"])
    agent.connect()
    _fresh_window()
    for _ in range(LIMIT * 2):
        agent.heartbeat()
