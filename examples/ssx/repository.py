"""Checksummed copies and the results repository (one folder per dataset, with a manifest).

The manifest is ``manifest-sha256.txt`` in the BagIt / ``sha256sum`` format
(``<hex digest>  <relative path>`` per line), so ``sha256sum -c manifest-sha256.txt`` checks it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

MANIFEST = "manifest-sha256.txt"
_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def copy_verified(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Copy ``src`` to ``dst``, hashing while copying and re-reading the copy to verify it.

    An existing ``dst`` with the same checksum is kept (so an interrupted transfer resumes).
    Returns ``{"name", "bytes", "sha256", "copied"}``; raises ``OSError`` on a mismatch.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    size = src.stat().st_size
    if dst.exists() and dst.stat().st_size == size:
        digest = sha256_file(src)
        if sha256_file(dst) == digest:
            return {"name": dst.name, "bytes": size, "sha256": digest, "copied": False}
    tmp = dst.with_name(dst.name + ".part")
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while block := fin.read(_BLOCK):
            digest.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    if sha256_file(tmp) != digest.hexdigest():
        tmp.unlink()
        raise OSError(f"checksum mismatch copying {src} to {dst}")
    shutil.copystat(src, tmp)
    os.replace(tmp, dst)
    return {"name": dst.name, "bytes": size, "sha256": digest.hexdigest(), "copied": True}


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write ``manifest-sha256.txt`` covering every file below ``folder``."""
    folder = Path(folder)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    path = folder / MANIFEST
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_manifest(folder: str | os.PathLike) -> list[str]:
    """Problems found checking ``folder`` against its manifest (empty list: all good)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        return [f"no {MANIFEST} in {folder}"]
    problems, listed = [], set()
    for line in manifest.read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed.add(name)
        path = folder / name
        if not path.is_file():
            problems.append(f"missing: {name}")
        elif sha256_file(path) != digest:
            problems.append(f"checksum mismatch: {name}")
    extra = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and p.name != MANIFEST} - listed
    problems += [f"not in manifest: {name}" for name in sorted(extra)]
    return problems


def deposit(results_dir: str | os.PathLike, repository: str | os.PathLike,
            dataset_id: str) -> dict:
    """Move ``results_dir`` into ``repository/<dataset_id>`` with a verified manifest.

    The manifest is written before the move and checked after it, so a copy across file
    systems is verified too. Returns ``{"path", "manifest", "files", "bytes"}``.
    """
    target = Path(repository) / dataset_id
    if target.exists():
        raise FileExistsError(f"dataset {dataset_id} already in the repository: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(results_dir)
    shutil.move(str(results_dir), str(target))
    problems = verify_manifest(target)
    if problems:
        raise OSError(f"repository copy of {dataset_id} is damaged: {problems}")
    files = [p for p in target.rglob("*") if p.is_file()]
    return {"path": str(target), "manifest": str(target / MANIFEST), "files": len(files),
            "bytes": sum(p.stat().st_size for p in files)}
