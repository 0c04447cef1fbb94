"""``allowed_functions`` is enforced at both ends: the service refuses to queue other functions
for the endpoint, and the endpoint refuses to run them even if its record in the service is
changed to allow them (a misconfigured or compromised service cannot widen it)."""

from __future__ import annotations

import pytest
from fedcompute import Executor
from fedcompute.errors import ForbiddenError, FunctionNotAllowed

pytestmark = pytest.mark.timeout(300)


def allowed(x):
    return x + 1


def forbidden(x):
    return x - 1


def test_allowed_functions_enforced_by_service_and_endpoint(sec):
    alice = sec.alice()
    ok, other = alice.register_function(allowed), alice.register_function(forbidden)
    endpoint_id = sec.stack.start_endpoint("restricted", allowed_functions=[ok])
    try:
        record = alice.request("GET", f"/endpoints/{endpoint_id}")
        assert record["allowed_functions"] == [ok]
        with Executor(endpoint_id, client=alice) as ex:
            assert ex.submit(allowed, 1).result(timeout=120) == 2
            # The service end: not even queued.
            with pytest.raises(ForbiddenError, match=f"does not allow function {other}"):
                ex.submit(forbidden, 1).result(timeout=120)
        # Widen the service's record: the endpoint still refuses, with a clear error...
        alice.update_endpoint(endpoint_id, allowed_functions=[ok, other])
        with Executor(endpoint_id, client=alice) as ex:
            with pytest.raises(FunctionNotAllowed, match="not in this endpoint's allowed_funct"):
                ex.submit(forbidden, 1).result(timeout=120)
        # ...also after a restart, when it reads the wider list from the service.
        sec.stack.stop_endpoint("restricted")
        sec.stack.start_endpoint("restricted")
        with Executor(endpoint_id, client=alice) as ex:
            refused = ex.submit(forbidden, 1)
            assert ex.submit(allowed, 5).result(timeout=120) == 6
            with pytest.raises(FunctionNotAllowed):
                refused.result(timeout=120)
    finally:
        sec.stack.stop_endpoint("restricted")
