"""Results that cannot be sent yet wait on disk, in order, until the service takes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedcompute.protocol import packb, unpackb


class Spool:
    """A folder of msgpack files, one per unsent result batch, written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("*.tmp"):
            stale.unlink()

    def put(self, results: list[dict]) -> Path:
        final = self.path / f"{time.time_ns():020d}.msgpack"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(packb(results))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(final)
        return final

    def files(self) -> list[Path]:
        return sorted(self.path.glob("*.msgpack"))

    def read(self, path: Path) -> list[dict]:
        return unpackb(path.read_bytes())

    def __len__(self) -> int:
        return len(self.files())
