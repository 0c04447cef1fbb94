"""Serialization of functions, arguments, results and exceptions.

Everything crossing the wire is a cloudpickle payload behind a 4-byte header naming the
format and the sender's Python version, so that a mismatch gives a clear error instead of a
segfault or an obscure unpickling failure. The service never looks inside.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
import sys
import traceback
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType
from typing import Any

import cloudpickle

from .errors import BUILTIN_ERRORS, RemoteTraceback, SerializationError, TaskExecutionFailed

MAGIC = b"F1"
_HEADER = MAGIC + bytes(sys.version_info[:2])


def _header_python(data: bytes) -> tuple[int, int]:
    if len(data) < 4 or data[:2] != MAGIC:
        raise SerializationError("not a fedcompute payload (bad header)")
    return data[2], data[3]


@lru_cache(maxsize=1)
def _distributed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _importable_elsewhere(module: ModuleType) -> bool:
    """True when the module comes from an installed distribution or the standard library.

    Anything else (``__main__``, a notebook, a test module, an Airflow DAG file imported under a
    mangled name, a script next to the user's code) is pickled by value, because the endpoint
    cannot import it.
    """
    top = module.__name__.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        return True
    return top in _distributed_top_levels() and not module.__name__.startswith("__")


_user_modules_cache: tuple[int, tuple[ModuleType, ...]] = (-1, ())


def _user_modules() -> tuple[ModuleType, ...]:
    """Loaded modules the endpoint cannot import (recomputed only when sys.modules grows)."""
    global _user_modules_cache
    count = len(sys.modules)
    if _user_modules_cache[0] != count:
        found = tuple(
            mod for name, mod in list(sys.modules.items())
            if isinstance(mod, ModuleType) and name != "__main__"
            # some C extensions register under another name (websockets.speedups says
            # "websocket.speedups"); cloudpickle refuses those, and they are importable anyway
            and getattr(mod, "__name__", None) == name
            and getattr(mod, "__file__", None) and not _importable_elsewhere(mod)
        )
        _user_modules_cache = (count, found)
    return _user_modules_cache[1]


def dumps(obj: Any) -> bytes:
    """Serialize any object, pickling code from non-installed modules by value.

    Plain pickle is tried first (about 10x faster for plain data); its output is kept only if
    it refers to no module the other side might lack, else cloudpickle does the job.
    Registration with cloudpickle is permanent (and idempotent): no endpoint can import those
    modules anyway, and unregistering would race with other threads pickling.
    """
    modules = _user_modules()
    own = sys.modules.get(getattr(obj, "__module__", None) or "")
    if (own is not None and own.__name__ != "__main__" and own not in modules
            and getattr(own, "__file__", None) and not _importable_elsewhere(own)):
        modules = (*modules, own)  # swapped in after the cache was built
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - lambdas, local classes...: cloudpickle's job
        data = None
    if data is not None and b"__main__" not in data and not any(
            mod.__name__.encode() in data for mod in modules):
        return _HEADER + data
    for mod in modules:
        if mod.__name__ not in _registered:
            cloudpickle.register_pickle_by_value(mod)
            _registered.add(mod.__name__)
    try:
        return _HEADER + cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the user's to fix
        raise SerializationError(f"cannot serialize {type(obj).__name__}: {exc}") from exc


_registered: set[str] = set()


def loads(data: bytes) -> Any:
    """Deserialize a payload made by :func:`dumps`, explaining Python version mismatches."""
    major, minor = _header_python(data)
    try:
        return pickle.loads(memoryview(data)[4:])
    except Exception as exc:  # noqa: BLE001
        here = sys.version_info[:2]
        if (major, minor) != here:
            raise SerializationError(
                f"payload made on Python {major}.{minor} cannot be loaded on Python "
                f"{here[0]}.{here[1]} ({type(exc).__name__}: {exc}); run the endpoint and the "
                "SDK on the same Python minor version"
            ) from exc
        raise SerializationError(f"cannot deserialize payload: {type(exc).__name__}: {exc}") from exc


def function_digest(body: bytes) -> str:
    """Content hash of a serialized function (the basis of its id)."""
    return hashlib.sha256(body).hexdigest()


def serialize_function(fn: Callable) -> bytes:
    return dumps(fn)


def serialize_args(args: tuple, kwargs: dict) -> bytes:
    return dumps((args, kwargs))


def pack_exception(exc: BaseException) -> dict:
    """Turn an exception into a wire envelope: its type, message, traceback and pickle."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = dumps(exc)
        loads(pickled)  # some exceptions pickle but cannot be rebuilt
    except Exception:  # noqa: BLE001
        pickled = b""
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": tb,
        "pickle": pickled,
    }


def error_envelope(error: type[BaseException], message: str) -> dict:
    """The wire envelope of one of fedcompute's own errors, made without raising it (the
    service reports lost and cancelled tasks this way; the SDK rebuilds them by name)."""
    return {"type": f"{error.__module__}.{error.__qualname__}", "message": message,
            "traceback": "", "pickle": b""}


def unpack_exception(envelope: dict) -> BaseException:
    """Rebuild the remote exception as its own type where possible, with the remote traceback."""
    tb = envelope.get("traceback") or ""
    name = envelope.get("type") or "Exception"
    short = name.rpartition(".")[2]
    exc: BaseException | None = None
    if envelope.get("pickle"):
        try:
            exc = loads(envelope["pickle"])
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None and name.startswith("fedcompute.") and short in BUILTIN_ERRORS:
        exc = BUILTIN_ERRORS[short](envelope.get("message", ""))
    if not isinstance(exc, BaseException):
        return TaskExecutionFailed(name, envelope.get("message", ""), tb)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
        exc.remote_traceback = tb  # type: ignore[attr-defined]
    return exc
