"""``ShellFunction``: run a shell command on the endpoint, as Globus Compute's does.

Also the worker hardware report behind ``Executor.get_worker_hardware_details``: a handful of
shell commands run on a worker.
"""

from __future__ import annotations

import keyword
import os
import shutil
import signal
import subprocess
from collections import deque
from dataclasses import asdict, dataclass
from typing import IO, Any

#: What ``str(ShellResult)`` shows of each stream (the attributes keep ``snippet_lines``).
_SHOWN_LINES = 10
_SHOWN_CHARS = 1024


@dataclass
class ShellResult:
    """What a shell command left behind: the last ``snippet_lines`` lines of each stream.

    ``exception_name`` is ``"subprocess.CalledProcessError"`` for a non-zero exit and
    ``"subprocess.TimeoutExpired"`` when the walltime stopped the command (exit code 124).
    """

    cmd: str
    stdout: str
    stderr: str
    returncode: int
    exception_name: str | None = None

    def __str__(self) -> str:
        text = f"exit code: {self.returncode}\n   stdout:\n{_shown(self.stdout, 'stdout')}"
        if self.returncode != 0:
            text += f"\n\n   stderr:\n{_shown(self.stderr, 'stderr')}"
            if self.exception_name:
                text += f"\n\nexception: {self.exception_name}"
        return text


def _shown(stream: str, name: str) -> str:
    """The end of a stream as ``str(ShellResult)`` shows it: a few lines, marked if cut."""
    whole = stream.strip("\n").rstrip()
    tail = "\n".join(whole[-_SHOWN_CHARS:].splitlines()[-_SHOWN_LINES:])
    if tail != whole:
        return f"[... truncated; see .{name} for full output ...]\n{tail}"
    return tail


class ShellFunction:
    """A shell command template, run on the endpoint with the call's keyword arguments.

    ``ShellFunction("gzip -9 {path}")(path="x")`` runs ``gzip -9 x`` with bash (``sh`` where
    there is no bash) and returns a :class:`ShellResult`, or its fields as a dict when
    ``return_dict=True``. ``stdout``/``stderr`` name files on the endpoint that the streams are
    appended to (their folders are created); the snippets are then the last ``snippet_lines``
    lines of those files. ``walltime`` (seconds) stops the command and its children and
    returns code 124, like coreutils' ``timeout``. ``name`` is the name it registers under.
    ``cwd`` and ``env`` (added to the worker's environment) are fedcompute's own.
    """

    def __init__(self, cmd: str, stdout: str | None = None, stderr: str | None = None,
                 walltime: float | None = None, snippet_lines: int = 1000,
                 name: str | None = None, return_dict: bool = False, *,
                 cwd: str | None = None, env: dict[str, str] | None = None):
        if walltime is not None and walltime < 0:
            raise ValueError(f"walltime must not be negative, got {walltime!r}")
        name = name or type(self).__name__
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"name must be a valid Python identifier, got {name!r}")
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr
        self.walltime = walltime
        self.snippet_lines = snippet_lines
        self.return_dict = return_dict
        self.cwd = cwd
        self.env = env
        self.__name__ = name

    def __call__(self, **kwargs: Any) -> ShellResult | dict[str, Any]:
        """Format the command with ``kwargs`` and run it (on the endpoint, when submitted)."""
        result = self.run(self.cmd.format(**kwargs))
        return asdict(result) if self.return_dict else result

    def run(self, command: str) -> ShellResult:
        """Run an already formatted command line."""
        env = {**os.environ, **self.env} if self.env else None
        out = _open_stream(self.stdout)
        err = _open_stream(self.stderr)
        timed_out = False
        try:
            # Own session: a walltime stops the whole pipeline, not just the shell.
            proc = subprocess.Popen(command, shell=True, executable=_SHELL, stdout=out,
                                    stderr=err, cwd=self.cwd, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=self.walltime)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                code = 124
            stdout, stderr = self._snippet(out), self._snippet(err)
        finally:
            out.close()
            err.close()
        if timed_out:
            stderr += f"\ncommand timed out after {self.walltime}s"
            exception = "subprocess.TimeoutExpired"
        else:
            exception = "subprocess.CalledProcessError" if code else None
        return ShellResult(command, stdout, stderr, code, exception)

    def _snippet(self, stream: IO[bytes]) -> str:
        stream.seek(0)
        keep = max(int(self.snippet_lines), 0)
        return b"".join(deque(stream, maxlen=keep)).decode(errors="replace") if keep else ""

    def __repr__(self) -> str:
        parts = [f"{self.cmd!r}"]
        for field in ("stdout", "stderr", "walltime", "cwd", "env"):
            if getattr(self, field) is not None:
                parts.append(f"{field}={getattr(self, field)!r}")
        if self.snippet_lines != 1000:
            parts.append(f"snippet_lines={self.snippet_lines!r}")
        if self.__name__ != type(self).__name__:
            parts.append(f"name={self.__name__!r}")
        if self.return_dict:
            parts.append("return_dict=True")
        return f"{type(self).__name__}({', '.join(parts)})"


_SHELL = shutil.which("bash") or "/bin/sh"


def _open_stream(path: str | None) -> IO[bytes]:
    """The file a stream goes to: the named one (appended to) or an anonymous temporary."""
    if path is None:
        import tempfile

        return tempfile.TemporaryFile()
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return open(path, "a+b")  # noqa: SIM115 - closed by ShellFunction.run


# --- worker hardware report ----------------------------------------------------------------

#: Commands whose output describes a worker's hardware; those not installed are skipped.
HARDWARE_COMMANDS = ("lscpu", "nvidia-smi", "free -h", "df -h", "lshw -C display")


def run_hardware_report(env: str | None = None) -> str:
    """A text report of the machine this runs on: Python, platform, CPUs, memory, GPUs, disks.

    ``env`` labels each section's heading (e.g. ``"fedcompute endpoint worker"``).
    """
    import platform
    import sys

    label = f"== {env} == " if env else ""
    sections = [("python", "\n".join([
        f"version: {sys.version}", f"executable: {sys.executable}",
        f"platform: {platform.platform()}", f"node: {platform.node()}",
        f"machine: {platform.machine()}", f"cpu count: {os.cpu_count()}",
        f"user: {os.environ.get('USER') or os.environ.get('LOGNAME')}",
        f"virtual env: {os.environ.get('VIRTUAL_ENV')}"]))]
    try:
        import psutil

        memory = psutil.virtual_memory()
        sections.append(("psutil.virtual_memory()", f"total: {memory.total}\n"
                         f"available: {memory.available}\npercent used: {memory.percent}"))
    except ImportError:
        pass
    for command in HARDWARE_COMMANDS:
        if not shutil.which(command.split()[0]):
            continue
        try:
            done = subprocess.run(command.split(), capture_output=True, text=True, timeout=30)
            text = done.stdout or done.stderr or "(no output)"
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"failed: {type(exc).__name__}: {exc}"
        sections.append((f"shell: {command}", text.rstrip()))
    return "\n\n".join(f"{label}== {title} ==\n{text}" for title, text in sections)
