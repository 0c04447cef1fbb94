"""Build the container images the container tests use, from this machine's own Python: no
registry is needed (none is reachable in CI).

    .venv/bin/python -m tests.endpoint.container_image      # build (cached), print the tags

Images (podman), each tagged with a hash of what went into it, so a rebuild happens only
when that changes:

``localhost/fedcompute-test-base:<hash>``
    A root filesystem made here: this interpreter (stdlib, no site-packages), the
    distributions ``fedcompute[endpoint]`` needs, copied file by file from the venv (their
    ``RECORD``), the shared libraries all of it links against, ``/bin/sh`` and a few
    coreutils; imported with ``podman import``. About 100 MB; ~20 s to build.
``localhost/fedcompute-test:<hash>``
    base + fedcompute's own packages (``core/`` and ``endpoint/``): an endpoint worker image.
    Its ``/etc/fedcompute-image`` says ``worker``.
``localhost/fedcompute-test-task:<hash>``
    The same with ``/etc/fedcompute-image`` saying ``task``: "another image" for per-task
    containers.
``localhost/fedcompute-test-shell:<hash>``
    ``/bin/sh`` and coreutils only, no Python (``shell``): a tool image for ShellFunctions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
#: What the endpoint side needs (pyproject's core dependencies plus the ``endpoint`` extra).
REQUIREMENTS = ["click", "cloudpickle", "httpx", "msgpack", "pydantic", "pyyaml", "rich",
                "dask", "distributed", "psutil"]
TOOLS = ["cat", "echo", "env", "id", "ls", "sleep", "uname", "true", "false", "mkdir", "rm",
         "hostname", "head", "tail", "wc", "touch"]
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "config-3.11-x86_64-linux-gnu"}
REPO = "localhost"


def podman(*args: str, input: bytes | None = None, check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], input=input, capture_output=True, check=check,
                          timeout=timeout)


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def distributions() -> list[metadata.Distribution]:
    """The installed distributions ``REQUIREMENTS`` pull in (markers evaluated, no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(REQUIREMENTS)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [found[k] for k in sorted(found)]


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _tree_digest(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")) + sorted(folder.rglob("*.yaml")):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def base_tag() -> str:
    dists = ",".join(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    script = Path(__file__).read_bytes()
    return f"{REPO}/fedcompute-test-base:{_digest(sys.version, dists, script)}"


def source_tag(name: str) -> str:
    digest = _digest(base_tag(), _tree_digest(ROOT / "core", ROOT / "endpoint"),
                     Path(__file__).read_bytes())
    return f"{REPO}/{name}:{digest}"


def shell_tag() -> str:
    return f"{REPO}/fedcompute-test-shell:{_digest(Path(__file__).read_bytes(), *TOOLS)}"


def _copy(src: Path, rootfs: Path) -> None:
    """Copy a file to the same absolute path under ``rootfs``, following symlinks in its
    path but recreating the final symlink (libfoo.so.1 -> libfoo.so.1.2)."""
    dest = rootfs / str(src).lstrip("/")
    if dest.exists() or dest.is_symlink():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        os.symlink(target, dest)
        _copy((src.parent / target).resolve() if not os.path.isabs(target) else Path(target),
              rootfs)
    else:
        shutil.copy2(src, dest)


def _shared_libraries(files: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(Path(parts[2]))
            elif parts and parts[0].startswith("/"):
                libs.add(Path(parts[0]))
    return libs


def _skeleton(rootfs: Path, label: str) -> None:
    # Debian's merged /usr: /bin, /lib, /lib64 are links into /usr.
    for top in ("bin", "lib", "lib64", "sbin"):
        (rootfs / "usr" / top).mkdir(parents=True, exist_ok=True)
        os.symlink(f"usr/{top}", rootfs / top)
    for folder in ("etc", "tmp", "root", "proc", "sys", "dev", "var/tmp", "work"):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "var/tmp").chmod(0o1777)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                       "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / "etc/fedcompute-image").write_text(label + "\n")
    for tool in ["sh", *TOOLS]:
        found = shutil.which(tool)
        if found:
            src = Path(found).resolve()
            dest = rootfs / "usr/bin" / tool
            shutil.copy2(src, dest)


def _import(rootfs: Path, tag: str, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                       check=True)
        changes = [f"ENV {k}={v}" for k, v in env.items()]
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        podman(*args, str(tarball), tag)


def build_shell(tag: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        _skeleton(rootfs, "shell")
        binaries = [p for p in (rootfs / "usr/bin").iterdir() if p.is_file()]
        for lib in _shared_libraries(binaries):
            _copy(lib, rootfs)
        _import(rootfs, tag, {"PATH": "/usr/local/bin:/usr/bin:/bin"})


def build_base(tag: str) -> None:
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        _skeleton(rootfs, "base")
        local = rootfs / "usr/local"
        (local / "bin").mkdir(parents=True)
        shutil.copy2(Path(sys.base_prefix) / "bin" / version, local / "bin" / version)
        for alias in ("python3", "python"):
            os.symlink(version, local / "bin" / alias)
        # libpython: in the default library path (the interpreter's RUNPATH names this host).
        libdir = Path(sysconfig.get_config_var("LIBDIR") or prefix / "lib")
        ldlibrary = sysconfig.get_config_var("INSTSONAME") or ""
        if ldlibrary and (libdir / ldlibrary).exists():
            shutil.copy2(libdir / ldlibrary, rootfs / "usr/lib" / ldlibrary)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        shutil.copytree(stdlib, local / "lib" / version, symlinks=True,
                        ignore=lambda d, names: [n for n in names if Path(d) == stdlib
                                                 and n in STDLIB_SKIP])
        site = local / "lib" / version / "site-packages"
        site.mkdir()
        purelib = Path(sysconfig.get_paths()["purelib"])
        for dist in distributions():
            for file in dist.files or []:
                src = Path(file.locate())
                try:
                    relative = src.resolve().relative_to(purelib.resolve())
                except ValueError:
                    continue  # console scripts in the venv's bin/: not needed
                if src.is_file() and "__pycache__" not in relative.parts:
                    dest = site / relative
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest)
        objects = [local / "bin" / version] + [p for p in local.rglob("*.so*") if p.is_file()]
        objects += [p for p in (rootfs / "usr/bin").iterdir() if p.is_file()]
        for lib in _shared_libraries(objects):
            if "libpython" not in lib.name:
                _copy(lib, rootfs)
        # Byte-compile now (same interpreter), so that each container start need not.
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(local / "lib")],
                       check=False, capture_output=True)
        _import(rootfs, tag, {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                              "PYTHONUNBUFFERED": "1"})


def build_with_sources(base: str, tag: str, label: str) -> None:
    """``base`` plus fedcompute's ``core`` and ``endpoint`` packages as ``fedcompute``."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = f"/usr/local/lib/{version}/site-packages"
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "core", context / "fedcompute", ignore=ignore)
        shutil.copytree(ROOT / "endpoint", context / "fedcompute" / "endpoint", ignore=ignore)
        (context / "fedcompute-image").write_text(label + "\n")
        (context / "Containerfile").write_text(
            f"FROM {base}\n"
            f"COPY fedcompute {site}/fedcompute\n"
            "COPY fedcompute-image /etc/fedcompute-image\n")
        podman("build", "--quiet", "--network", "none", "-t", tag, "-f",
               str(context / "Containerfile"), str(context))


def build_all() -> dict[str, str]:
    """Build what is missing; returns ``{"worker": tag, "task": tag, "shell": tag}``."""
    base = base_tag()
    if not image_exists(base):
        build_base(base)
    tags = {"worker": source_tag("fedcompute-test"), "task": source_tag("fedcompute-test-task"),
            "shell": shell_tag()}
    for label in ("worker", "task"):
        if not image_exists(tags[label]):
            build_with_sources(base, tags[label], label)
    if not image_exists(tags["shell"]):
        build_shell(tags["shell"])
    return tags


if __name__ == "__main__":
    for label, tag in build_all().items():
        print(f"{label}\t{tag}")
