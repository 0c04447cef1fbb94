"""A searchable catalogue of published datasets: SQLite with an FTS5 full-text index.

Every dataset has an owner and a list of users allowed to read it (``"*"`` means everyone).
The catalogue enforces that on every read: :meth:`Catalogue.search` only returns what the
asking user may see, and :meth:`Catalogue.get` raises ``PermissionError`` for anyone else.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

PUBLIC = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL, created TEXT NOT NULL,
    path TEXT, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS access (
    dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE, user TEXT NOT NULL,
    PRIMARY KEY (dataset_id, user));
CREATE VIRTUAL TABLE IF NOT EXISTS datasets_fts USING fts5(
    id UNINDEXED, title, description, keywords, body, tokenize = 'porter unicode61');
"""

# Readable by `:user`: owned by them, shared with them, or public.
_READABLE = """(d.owner = :user OR EXISTS (
    SELECT 1 FROM access a WHERE a.dataset_id = d.id AND a.user IN (:user, '*')))"""


class Catalogue:
    """The catalogue in one SQLite file (safe for several processes: WAL, busy timeout)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def add(self, record: dict, *, owner: str, allowed_users: Iterable[str] = (),
            dataset_id: str | None = None, path: str | None = None) -> str:
        """Publish ``record`` (JSON-able metadata; ``title``, ``description``, ``keywords``
        are indexed with the rest); returns the dataset id."""
        _check_user(owner)
        dataset_id = dataset_id or uuid.uuid4().hex
        title = str(record.get("title") or dataset_id)
        keywords = record.get("keywords") or []
        keywords = " ".join(keywords) if isinstance(keywords, list | tuple) else str(keywords)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        users = sorted({_check_user(u) for u in allowed_users} - {owner})
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)",
                       (dataset_id, owner, title, created, path, json.dumps(record)))
            db.executemany("INSERT INTO access VALUES (?, ?)", [(dataset_id, u) for u in users])
            db.execute("INSERT INTO datasets_fts VALUES (?, ?, ?, ?, ?)",
                       (dataset_id, title, str(record.get("description", "")), keywords,
                        _flatten(record)))
        return dataset_id

    def search(self, query: str, *, user: str, limit: int = 20, raw: bool = False) -> list[dict]:
        """Datasets matching ``query`` that ``user`` may read, best first.

        By default every word must match (words are quoted, so ``-`` or ``:`` are harmless;
        a trailing ``*`` is a prefix search). ``raw=True`` passes FTS5 query syntax through.
        """
        match = query if raw else _to_match(query)
        if not match:
            return []
        sql = f"""SELECT d.id, d.owner, d.title, d.created, d.path,
                         snippet(datasets_fts, 4, '[', ']', '…', 12) AS snippet
                  FROM datasets_fts JOIN datasets d ON d.id = datasets_fts.id
                  WHERE datasets_fts MATCH :match AND {_READABLE}
                  ORDER BY bm25(datasets_fts) LIMIT :limit"""
        try:
            with closing(self._connect()) as db:
                rows = db.execute(sql, {"match": match, "user": user, "limit": limit}).fetchall()
        except sqlite3.OperationalError as exc:
            raise ValueError(f"bad search query {query!r}: {exc}") from exc
        return [dict(row) for row in rows]

    def get(self, dataset_id: str, *, user: str) -> dict:
        """The full entry of one dataset; ``PermissionError`` if ``user`` may not read it."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM datasets d WHERE id = :id",
                             {"id": dataset_id}).fetchone()
            if row is None:
                raise KeyError(f"no dataset {dataset_id!r} in the catalogue")
            allowed = db.execute(f"SELECT 1 FROM datasets d WHERE d.id = :id AND {_READABLE}",
                                 {"id": dataset_id, "user": user}).fetchone()
            users = [r[0] for r in db.execute(
                "SELECT user FROM access WHERE dataset_id = ? ORDER BY user", (dataset_id,))]
        if allowed is None:
            raise PermissionError(f"user {user!r} may not read dataset {dataset_id!r}")
        entry = dict(row)
        entry["record"] = json.loads(entry["record"])
        entry["allowed_users"] = users
        return entry

    def share(self, dataset_id: str, users: Iterable[str], *, user: str) -> None:
        """Let ``users`` read a dataset; only its owner (``user``) may do that."""
        self._owned(dataset_id, user)
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR IGNORE INTO access VALUES (?, ?)",
                           [(dataset_id, _check_user(u)) for u in users if u != user])

    def unshare(self, dataset_id: str, users: Iterable[str], *, user: str) -> None:
        """Take read access away again (owner only)."""
        self._owned(dataset_id, user)
        with closing(self._connect()) as db, db:
            db.executemany("DELETE FROM access WHERE dataset_id = ? AND user = ?",
                           [(dataset_id, u) for u in users])

    def list(self, *, user: str) -> list[dict]:
        """All datasets ``user`` may read, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute(f"""SELECT d.id, d.owner, d.title, d.created, d.path
                                  FROM datasets d WHERE {_READABLE}
                                  ORDER BY d.created DESC, d.rowid DESC""",
                              {"user": user}).fetchall()
        return [dict(row) for row in rows]

    def _owned(self, dataset_id: str, user: str) -> None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT owner FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise KeyError(f"no dataset {dataset_id!r} in the catalogue")
        if row[0] != user:
            raise PermissionError(f"only the owner of dataset {dataset_id!r} may change access")


def _check_user(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"bad user name {name!r}")
    return name.strip()


def _to_match(query: str) -> str:
    """Plain words to an FTS5 query: each word quoted, all required; ``word*`` is a prefix."""
    terms = []
    for word in query.split():
        prefix = word.endswith("*")
        word = word.rstrip("*").replace('"', '""')
        if word:
            terms.append(f'"{word}"' + ("*" if prefix else ""))
    return " ".join(terms)


def _flatten(value, prefix: str = "") -> str:
    """Metadata as indexable text: ``key value`` pairs, nested keys joined with ``_``."""
    if isinstance(value, dict):
        return " ".join(_flatten(v, f"{prefix}_{k}" if prefix else str(k))
                        for k, v in value.items())
    if isinstance(value, list | tuple):
        if len(value) > 50:  # long numeric arrays are not worth indexing
            return prefix
        return " ".join(_flatten(v, prefix) for v in value)
    text = re.sub(r"\s+", " ", str(value))
    return f"{prefix} {text}" if prefix else text
