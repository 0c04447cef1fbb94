"""Unit tests of serialization (no service needed)."""

from __future__ import annotations

import pickle
import sys

import pytest
from fedcompute import errors, serialize


class LocalThing:
    def __init__(self, x):
        self.x = x


def test_plain_data_uses_pickle_and_round_trips():
    data = serialize.dumps(((1, "a", [2.5]), {"k": b"bytes"}))
    assert serialize.loads(data) == ((1, "a", [2.5]), {"k": b"bytes"})


def test_objects_of_non_installed_modules_go_by_value():
    data = serialize.dumps(LocalThing(3))
    # by value: the class definition travels, not a reference to this test module
    assert b"LocalThing" in data
    assert serialize.loads(data).x == 3


def test_lambda_round_trip():
    assert serialize.loads(serialize.dumps(lambda y: y + 1))(1) == 2


def test_python_version_mismatch_is_explained():
    data = serialize.dumps(LocalThing)
    other = serialize.MAGIC + bytes([3, sys.version_info[1] + 1]) + b"garbage"
    with pytest.raises(errors.SerializationError, match=f"Python 3.{sys.version_info[1] + 1}"):
        serialize.loads(other)
    assert serialize.loads(data) is not None


def test_not_a_payload():
    with pytest.raises(errors.SerializationError, match="bad header"):
        serialize.loads(b"xx")


def test_exception_envelope_rebuilds_type_and_traceback():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        env = serialize.pack_exception(exc)
    rebuilt = serialize.unpack_exception(env)
    assert isinstance(rebuilt, KeyError)
    assert "raise KeyError" in rebuilt.remote_traceback
    assert isinstance(rebuilt.__cause__, errors.RemoteTraceback)


def test_unpicklable_exception_becomes_task_execution_failed():
    env = {"type": "some.module.Weird", "message": "odd", "traceback": "tb", "pickle": b""}
    rebuilt = serialize.unpack_exception(env)
    assert isinstance(rebuilt, errors.TaskExecutionFailed)
    assert rebuilt.remote_type == "some.module.Weird" and "tb" in str(rebuilt)


def test_builtin_errors_rebuilt_by_name():
    env = {"type": "fedcompute.errors.EndpointLost", "message": "gone", "pickle": b""}
    assert isinstance(serialize.unpack_exception(env), errors.EndpointLost)


def test_service_never_needs_to_unpickle():
    # The header is the only thing the service could read; payloads are opaque bytes.
    data = serialize.dumps((1, 2))
    assert data[:2] == serialize.MAGIC
    assert pickle.loads(data[4:]) == (1, 2)
