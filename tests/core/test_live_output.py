"""Live output end to end (``stream_output=True``): a running task's stdout, stderr and logging
lines reach its future while it runs, in order, on the fast lane and on the Dask path; the
amount a task may stream is bounded (what is cut is said); without ``stream_output`` nothing
streams."""

from __future__ import annotations

import threading
import time

import pytest
from fedcompute import Executor

from tests.reliability.helpers import running_stack, wait_for

pytestmark = pytest.mark.timeout(600)


def chatty(lines, pause, release_file):
    import logging
    import os
    import sys
    import time

    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    print("to stderr", file=sys.stderr)
    logging.getLogger("chatty").info("a log record")
    while not os.path.exists(release_file):  # the test reads the lines before it lets go
        time.sleep(0.05)
    sys.stdout.write("no newline at the end")
    return lines


def flood(chars):
    import sys

    for _ in range(chars // 1000):
        sys.stdout.write("x" * 999 + "\n")
    return chars


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("output"), endpoint=False) as stack:
        stack.start_endpoint("lane", engine={"type": "local", "workers": 1})
        stack.start_endpoint("dask", engine={"type": "local", "workers": 1}, fast_lane=False)
        yield stack


@pytest.mark.parametrize("path", ["lane", "dask"])
def test_output_arrives_while_the_task_runs_in_order(stack, path, tmp_path):
    release = tmp_path / "release"
    seen: list = []
    with Executor(stack.endpoint_ids[path], client=stack.client(), stream_output=True) as ex:
        future = ex.submit(chatty, 20, 0.05, str(release))
        future.add_output_callback(seen.append)
        # If a check fails, the task still ends (the executor's exit waits for it).
        threading.Timer(90, release.touch).start()
        wait_for(lambda: any(line.stream == "log" for line in future.output), 60,
                 "the log record to stream in")
        assert not future.done(), "all of this arrived while the task ran"
        lines = future.output
        stdout = [line.text for line in lines if line.stream == "stdout"]
        assert stdout == [f"line {i}" for i in range(20)]
        assert [line.text for line in lines if line.stream == "stderr"] == ["to stderr"]
        assert [line.text for line in lines if line.stream == "log"] == [
            "INFO chatty: a log record"]
        assert seen == lines, "the callback saw every line, in the same order"
        assert [line.at for line in lines] == sorted(line.at for line in lines)
        # Batched, not one message a line: 20 lines over ~1 s came in a few batches.
        assert len({line.at for line in lines}) <= 10
        release.touch()
        assert future.result(timeout=60) == 20
    assert future.output[-1].text == "no newline at the end", "the last partial line counts"
    assert seen == future.output
    assert "line 19" in future.stdout, "stream_output captures the whole output too"


def test_iter_output_follows_a_task_to_its_end(stack, tmp_path):
    release = tmp_path / "release"
    with Executor(stack.endpoint_ids["lane"], client=stack.client()) as ex:
        future = ex.submit_with(chatty, (5, 0.01, str(release)), stream_output=True)
        got = []
        for line in future.iter_output(timeout=120):
            got.append(line.text)
            if line.stream == "log":
                assert not future.done()
                release.touch()
        assert got[:5] == [f"line {i}" for i in range(5)]
        assert got[-1] == "no newline at the end"
        assert future.done()


def test_iter_output_times_out_naming_the_task(stack, tmp_path):
    with Executor(stack.endpoint_ids["lane"], client=stack.client(),
                  stream_output=True) as ex:
        future = ex.submit(chatty, 1, 0, str(tmp_path / "never"))
        with pytest.raises(TimeoutError, match=future.task_id):
            list(future.iter_output(timeout=2))
        (tmp_path / "never").touch()
        future.result(timeout=60)


def test_output_is_bounded_per_task_and_says_so(stack):
    with Executor(stack.endpoint_ids["lane"], client=stack.client(), stream_output=True) as ex:
        future = ex.submit(flood, 3_000_000)
        assert future.result(timeout=120) == 3_000_000
        wait_for(lambda: future.output, 10, "some output")
    text = "\n".join(line.text for line in future.output)
    assert len(text) <= 1024 * 1024 + 200
    assert "live output cut" in text


def test_no_stream_without_stream_output(stack, tmp_path):
    release = tmp_path / "release"
    threading.Timer(3, release.touch).start()
    with Executor(stack.endpoint_ids["lane"], client=stack.client(),
                  capture_output=True) as ex:
        future = ex.submit(chatty, 3, 0, str(release))
        assert future.result(timeout=60) == 3
    time.sleep(0.5)
    assert future.output == []
    assert "line 2" in future.stdout
