"""Unit tests of the endpoint side (``_remote``): output capture per thread, failures with their
output, async bodies. Each runs in a fresh interpreter, because the capture replaces
``sys.stdout``/``sys.stderr`` and touches the root logger of its process (as in a Dask worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap


def run_isolated(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON document as its last line."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(textwrap.dedent(code))  # a file, so that tracebacks show source lines
    try:
        done = subprocess.run([sys.executable, script.name], capture_output=True, text=True,
                              timeout=120)
    finally:
        os.unlink(script.name)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_threads_capture_their_own_output_and_root_level_is_restored():
    out = run_isolated("""
        import json, logging, sys, threading, time
        from fedcompute.plugins.prefect._remote import TaskBody

        def body(name):
            for i in range(3):
                print(f"{name} line {i}")
                logging.getLogger("lab").info("%s record %d", name, i)
                time.sleep(0.01)
            return name

        results = {}
        def run(name):
            results[name] = TaskBody(body)({}, (name,), {})

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        [t.start() for t in threads]; [t.join() for t in threads]
        sys.__stdout__.write(json.dumps({
            n: [e[4] for e in results[n][1]] for n in results
        } | {"root_level": logging.getLogger().level,
             "stdout_routed": type(sys.stdout).__name__}) + "\\n")
    """)
    for name in ("a", "b"):
        lines = out[name]
        assert [x for x in lines if "line" in x] == [f"{name} line {i}" for i in range(3)]
        assert [x for x in lines if "record" in x] == [f"{name} record {i}" for i in range(3)]
    assert out["root_level"] == 30  # WARNING again once no captured task runs
    assert out["stdout_routed"] == "_StreamRouter"


def test_console_handler_configured_later_does_not_duplicate_records():
    out = run_isolated("""
        import json, logging, logging.config, sys
        from fedcompute.plugins.prefect._remote import TaskBody

        TaskBody(print)({}, ("first task installs the routers",), {})
        # Like Prefect's import in a worker: a console handler on sys.stderr (our router now).
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"}},
            "root": {"level": "WARNING", "handlers": ["console"]}})

        def body():
            logging.getLogger("lab").warning("only once")
        value, events = TaskBody(body)({}, (), {})
        sys.__stdout__.write(json.dumps([e[4] for e in events]) + "\\n")
    """)
    assert out == ["only once"]


def test_failure_carries_packed_exception_and_output():
    out = run_isolated("""
        import json, pickle, sys
        from fedcompute import serialize
        from fedcompute.plugins.prefect._remote import RemoteTaskError, TaskBody

        def body(x):
            print("before the failure")
            raise KeyError(x)

        try:
            TaskBody(body)({}, ("missing",), {})
        except RemoteTaskError as exc:
            again = pickle.loads(pickle.dumps(exc))
            original = serialize.unpack_exception(again.envelope)
            sys.__stdout__.write(json.dumps({
                "type": type(original).__name__, "args": list(original.args),
                "tb": original.remote_traceback, "events": [e[4] for e in again.events]}) + "\\n")
    """)
    assert out["type"] == "KeyError" and out["args"] == ["missing"]
    assert "in body" in out["tb"] and "raise KeyError(x)" in out["tb"]
    assert "_remote.py" not in out["tb"]  # the user's frames only
    assert out["events"] == ["before the failure"]


def test_async_body_and_output_limits():
    out = run_isolated("""
        import asyncio, json, sys
        from fedcompute.plugins.prefect import _remote
        from fedcompute.plugins.prefect._remote import TaskBody

        async def body(n):
            await asyncio.sleep(0)
            for i in range(n):
                print(i)
            return n

        _remote.MAX_EVENTS = 10
        value, events = TaskBody(body)({}, (25,), {})
        sys.__stdout__.write(json.dumps({"value": value, "events": [e[4] for e in events]}) + "\\n")
    """)
    assert out["value"] == 25
    assert out["events"][:10] == [str(i) for i in range(10)]
    assert "15 more output lines" in out["events"][-1]
