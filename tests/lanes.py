"""Run the whole suite as two pytest processes side by side (``make test`` does this).

Much of the suite waits rather than computes: for Slurm and Grid Engine to start jobs, for
heartbeats to time out, for tokens to expire. One lane (:data:`LANE`: the batch systems, the
pipelines, sign-in and security) runs alongside the rest, so the waits overlap; both lanes'
tests start what they need on free ports, as they do in one process.

    python -m tests.lanes [pytest options]      # both lanes (what ``make test`` runs)
    python -m tests.lanes tests/core -x         # paths given: one ordinary pytest run

The second lane prints as it goes; the first lane's output follows it, and the command fails
if either lane did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from fedcompute import process

LANE = ["tests/batch", "tests/examples", "tests/auth", "tests/security"]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-rs"]


def _lane_args(args: list[str], suffix: str) -> list[str]:
    """``args`` with report files renamed for one lane (two processes cannot share one)."""
    out = []
    for arg in args:
        if arg.startswith("--junitxml="):
            path = arg.split("=", 1)[1]
            arg = f"--junitxml={path.removesuffix('.xml')}-{suffix}.xml"
        out.append(arg)
    return out


def main(args: list[str]) -> int:
    if any(not a.startswith("-") and os.path.exists(a.split("::")[0]) for a in args):
        return subprocess.call(PYTEST + ["--durations=40", *args])
    with tempfile.TemporaryFile("w+") as log:
        side = process.spawn(PYTEST + ["--durations=25", *LANE, *_lane_args(args, "lane")],
                             stdout=log, stderr=subprocess.STDOUT)
        ignored = [f"--ignore={path}" for path in LANE]
        try:
            main_rc = subprocess.call(PYTEST + ["--durations=40", *ignored, *args])
            side_rc = side.wait()
        except KeyboardInterrupt:
            side.send_signal(signal.SIGINT)
            side.wait()
            raise
        finally:
            if side.poll() is None:
                process.stop(side)
        log.seek(0)
        print(f"\n{'=' * 30} lane alongside: {' '.join(LANE)} {'=' * 30}", flush=True)
        sys.stdout.write(log.read())
    print(f"\nlanes: {'ok' if main_rc == 0 else f'FAILED ({main_rc})'} (the rest), "
          f"{'ok' if side_rc == 0 else f'FAILED ({side_rc})'} ({', '.join(LANE)})", flush=True)
    return main_rc or side_rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
