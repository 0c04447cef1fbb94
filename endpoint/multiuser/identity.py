"""Identity mapping: which local account runs a service user's tasks.

The endpoint's ``identity_mapping`` is tried in order: its ``table``, the table in its
``table_file`` (reread when the file changes; a broken file keeps the last good table), then
its regex ``rules`` (the first whose ``match`` fully matches the service user name gives the
account: ``output`` with the regex's groups filled in, as Globus Compute's expression mapping
does). The account must exist (``getpwnam``) and must not be root.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import IdentityMapping
from .errors import IdentityMappingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalUser:
    """A local POSIX account, as a user process runs."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def named(cls, name: str) -> LocalUser:
        """The account ``name`` (KeyError if there is none)."""
        entry = pwd.getpwnam(name)
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir,
                   entry.pw_shell)

    def template_context(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "gid": self.gid,
                "groups": [self.gid, *self.groups], "home": self.home}


class IdentityMapper:
    """``map(service_user) -> LocalUser``, or :class:`IdentityMappingError`."""

    def __init__(self, mapping: IdentityMapping, base: Path):
        self.mapping = mapping
        self.rules = [(re.compile(r.match), r.output) for r in mapping.rules]
        self.table_file = (base / mapping.table_file) if mapping.table_file else None
        self._file_table: dict[str, str] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if self.table_file is not None:
            self._reload(strict=True)

    def local_name(self, service_user: str) -> str | None:
        """The local account name the mapping gives ``service_user`` (None: no mapping)."""
        if service_user in self.mapping.table:
            return self.mapping.table[service_user]
        table = self._table_from_file()
        if service_user in table:
            return table[service_user]
        for pattern, output in self.rules:
            m = pattern.fullmatch(service_user)
            if m:
                return output.format(*m.groups(), username=service_user, **m.groupdict())
        return None

    def map(self, service_user: str) -> LocalUser:
        """The local account that runs ``service_user``'s tasks."""
        name = self.local_name(service_user)
        if not name:
            raise IdentityMappingError(
                f"user {service_user!r} has no local account on this endpoint (its identity "
                "mapping has no entry or rule for them); ask the endpoint's administrator")
        try:
            user = LocalUser.named(name)
        except KeyError:
            raise IdentityMappingError(
                f"user {service_user!r} maps to the local account {name!r}, which does not "
                "exist on this endpoint; ask the endpoint's administrator") from None
        if user.uid == 0:
            raise IdentityMappingError(
                f"user {service_user!r} maps to {name!r} (uid 0): a multi-user endpoint never "
                "runs tasks as root")
        return user

    # --- the table file ------------------------------------------------------------------

    def _table_from_file(self) -> dict[str, str]:
        if self.table_file is not None:
            self._reload(strict=False)
        return self._file_table

    def _reload(self, strict: bool) -> None:
        assert self.table_file is not None
        try:
            st = self.table_file.stat()
        except OSError as exc:
            if strict:
                raise ValueError(f"identity_mapping.table_file: {exc}") from None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._file_stamp:
                return
            try:
                table = read_table(self.table_file)
            except (OSError, ValueError) as exc:
                if strict:
                    raise
                log.error("%s; keeping the identity table read before", exc)
                self._file_stamp = stamp  # do not log again until it changes once more
                return
            if self._file_stamp is not None:
                log.info("identity table %s reread: %d entries", self.table_file, len(table))
            self._file_table, self._file_stamp = table, stamp


def read_table(path: Path) -> dict[str, str]:
    """A ``{service user: local account}`` table from a YAML or JSON file."""
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"identity table {path} is not valid {path.suffix or 'YAML'}: "
                         f"{exc}") from None
    data = data or {}
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()):
        raise ValueError(f"identity table {path} must map service user names to local "
                         "account names (strings)")
    return data


__all__ = ["IdentityMapper", "LocalUser", "read_table"]
