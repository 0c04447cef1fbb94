"""Every task ends: deleting an endpoint fails its tasks not ended, queued or held by its
agent, with ``EndpointDeleted`` (instead of leaving them waiting until they expire)."""

from __future__ import annotations

import pytest
from fedcompute import Executor
from fedcompute.errors import EndpointDeleted

from tests.reliability.agent_api import FakeAgent
from tests.reliability.helpers import running_stack, wait_for

pytestmark = pytest.mark.timeout(300)


def double(x):
    return 2 * x


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("ends"), endpoint=False) as stack:
        yield stack


def test_deleting_an_endpoint_fails_its_queued_and_held_tasks(stack):
    client = stack.client()
    reg = client.register_endpoint("doomed")
    agent = FakeAgent(stack.service_url, reg["credential"])
    agent.connect()
    ex = Executor(reg["endpoint_id"], client=client)
    futures = [ex.submit(double, i) for i in range(2500)]
    assert ex.flush(60) == []
    held = agent.lease(max_tasks=2)["tasks"]
    assert len(held) == 2
    client.delete_endpoint(reg["endpoint_id"])
    wait_for(lambda: all(f.done() for f in futures), 60, "every future to end")
    for future in futures:
        with pytest.raises(EndpointDeleted, match="was deleted"):
            future.result()
    info = client.get_task(held[0]["task_id"])
    assert info["status"] == "failed" and isinstance(info["exception"], EndpointDeleted)
    # The agent of a deleted endpoint is refused; its late result changes nothing.
    assert agent.post("/results", {"results": []}).status_code == 401
    ex.shutdown(wait=False)
