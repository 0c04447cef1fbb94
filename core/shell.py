"""``ShellFunction``: run a shell command on the endpoint, Globus Compute style."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass
class ShellResult:
    """What a shell command left behind."""

    cmd: str
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return self.stdout


class ShellFunction:
    """A shell command template, formatted with the call's keyword arguments.

    ``ShellFunction("gzip -9 {path}")(path="x")`` runs ``gzip -9 x`` in a shell. ``walltime``
    (seconds) stops it and returns code 124, like coreutils' ``timeout``; ``snippet_lines``
    keeps the last lines of each stream.
    """

    def __init__(self, cmd: str, walltime: float | None = None, snippet_lines: int = 1000,
                 cwd: str | None = None, env: dict[str, str] | None = None):
        self.cmd = cmd
        self.walltime = walltime
        self.snippet_lines = snippet_lines
        self.cwd = cwd
        self.env = env
        self.__name__ = "ShellFunction"

    def __call__(self, **kwargs: Any) -> ShellResult:
        import os

        command = self.cmd.format(**kwargs)
        env = {**os.environ, **self.env} if self.env else None
        try:
            done = subprocess.run(command, shell=True, capture_output=True, text=True,
                                  timeout=self.walltime, cwd=self.cwd, env=env)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code = 124
            out = _text(exc.stdout)
            err = _text(exc.stderr) + f"\ncommand timed out after {self.walltime}s"
        return ShellResult(command, code, self._tail(out), self._tail(err))

    def _tail(self, text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(lines[-self.snippet_lines:])

    def __repr__(self) -> str:
        return f"ShellFunction({self.cmd!r})"


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
