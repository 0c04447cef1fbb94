"""The first use of an endpoint checks what would otherwise fail every task later: an endpoint
reporting another Python (or cloudpickle, or fedcompute) is refused before any task is sent,
or warned about with ``check_versions="warn"``; an endpoint offline for long is warned about.
The endpoint here is a scripted agent reporting what the test chooses, through the real service."""

from __future__ import annotations

import platform
import time
import warnings

import pytest
from fedcompute import Executor, VersionMismatchError
from fedcompute.endpoint_check import EndpointOfflineWarning
from fedcompute.errors import VersionMismatchWarning

from tests.reliability.agent_api import FakeAgent
from tests.reliability.helpers import running_stack

pytestmark = pytest.mark.timeout(300)


def double(x):
    return 2 * x


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("check"), endpoint=False) as stack:
        yield stack


def _endpoint_reporting(stack, name: str, versions: dict) -> tuple[str, FakeAgent]:
    reg = stack.client().register_endpoint(name)
    agent = FakeAgent(stack.service_url, reg["credential"])
    agent.call("/connect", {"status": {"workers": 1, "versions": versions}})
    return reg["endpoint_id"], agent


def _other_python() -> str:
    major, minor, _ = platform.python_version_tuple()
    return f"{major}.{int(minor) + 1}.0"


def test_another_python_is_refused_before_any_task_is_sent(stack):
    endpoint_id, agent = _endpoint_reporting(stack, "newer-python", {"python": _other_python()})
    with Executor(endpoint_id, client=stack.client()) as ex:
        with pytest.raises(VersionMismatchError) as caught:
            ex.submit(double, 1)
        message = str(caught.value)
        assert "python" in message and platform.python_version() in message
        assert _other_python() in message
        assert ex.task_count_submitted == 0
    assert stack.client().get_endpoint_status(endpoint_id)["queued"] == 0
    assert agent.lease()["tasks"] == []


def test_warn_sends_anyway_and_matching_versions_pass_quietly(stack):
    import cloudpickle

    endpoint_id, agent = _endpoint_reporting(stack, "old-pickle", {
        "python": platform.python_version(), "cloudpickle": "1.6.0"})
    ex = Executor(endpoint_id, client=stack.client(), check_versions="warn")
    with pytest.warns(VersionMismatchWarning, match="cloudpickle"):
        ex.submit(double, 1)
    assert ex.flush(30) == []
    assert len(agent.lease()["tasks"]) == 1
    ex.shutdown(wait=False, cancel_futures=True)  # nobody runs them: the agent is scripted
    same, _ = _endpoint_reporting(stack, "same", {
        "python": platform.python_version(), "cloudpickle": cloudpickle.__version__})
    ex = Executor(same, client=stack.client())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex.submit(double, 1)
    assert ex.flush(30) == []
    ex.shutdown(wait=False, cancel_futures=True)


def test_an_endpoint_offline_for_long_is_warned_about(stack):
    endpoint_id, agent = _endpoint_reporting(stack, "gone", {})
    agent.call("/release", {"task_ids": [], "disconnect": True})
    time.sleep(1.5)
    ex = Executor(endpoint_id, client=stack.client(), offline_warning_after=1)
    with pytest.warns(EndpointOfflineWarning, match="offline"):
        ex.submit(double, 1)
    assert ex.flush(30) == []  # sent all the same: it runs when the endpoint is back
    ex.shutdown(wait=False, cancel_futures=True)
