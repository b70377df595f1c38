"""Drift history in SQLite: scans, host results, episodes, baseline versions.

One writer at a time (``BEGIN IMMEDIATE``), readers never blocked (WAL). Each
host result and the episode changes it causes are one transaction, so a
scan killed at any point leaves a consistent database; the scan row itself
stays ``running`` until the next writer sees that its process is gone and
marks it ``interrupted``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Any

import sqlite_utils

from driftd.compare import DriftItem
from driftd.errors import UserError
from driftd.paths import Path, compile_glob, parse_path

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0

OPEN = "open"
CLOSE_REASONS = ("resolved", "replaced", "ignored", "accepted", "remediated")
CHECKED = ("ok", "partial")


class StoreError(UserError, RuntimeError):
    """The database cannot be used as it is."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(value: Any) -> str:
    """JSON that survives any text, invalid UTF-8 included (escaped, not lost)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)


def default_db_path() -> FsPath:
    if os.geteuid() == 0:
        return FsPath("/var/lib/driftd/driftd.db")
    state = os.environ.get("XDG_STATE_HOME") or str(FsPath.home() / ".local/state")

    return FsPath(state) / "driftd" / "driftd.db"


def _migrate_1(db: sqlite_utils.Database) -> None:
    db.table("scans").create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "status": str,
            "trigger": str,
            "target": str,
            "pid": int,
            "hosts": int,
            "drifted": int,
            "unchecked": int,
        },
        pk="id",
    )
    db.table("snapshots").create(
        {"id": int, "host": str, "hash": str, "data": str}, pk="id"
    )
    db.table("snapshots").create_index(["hash"], unique=True)
    db.table("explains").create({"id": int, "hash": str, "data": str}, pk="id")
    db.table("explains").create_index(["hash"], unique=True)
    db.table("baseline_versions").create(
        {
            "id": int,
            "file": str,
            "version": int,
            "hash": str,
            "content": str,
            "created_at": str,
            "git_commit": str,
            "author": str,
            "reason": str,
        },
        pk="id",
    )
    db.table("baseline_versions").create_index(["file", "hash"], unique=True)
    db.table("host_results").create(
        {
            "id": int,
            "scan_id": int,
            "host": str,
            "status": str,
            "items": int,
            "opened": int,
            "closed": int,
            "snapshot_id": int,
            "explain_id": int,
            "baselines": str,
            "message": str,
        },
        pk="id",
        foreign_keys=[("scan_id", "scans", "id")],
    )
    db.table("host_results").create_index(["host", "scan_id"])
    db.table("host_results").create_index(["scan_id"])
    db.table("episodes").create(
        {
            "id": int,
            "host": str,
            "path": str,
            "kind": str,
            "expected": str,
            "actual": str,
            "first_scan": int,
            "last_scan": int,
            "first_seen": str,
            "last_seen": str,
            "seen_count": int,
            "closed_at": str,
            "closed_scan": int,
            "close_reason": str,
            "closed_by": str,
            "close_note": str,
        },
        pk="id",
    )
    db.execute(
        "CREATE UNIQUE INDEX episodes_open ON episodes (host, path) "
        "WHERE closed_at IS NULL"
    )
    db.table("episodes").create_index(["host", "first_seen"])
    db.table("episodes").create_index(["closed_at"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migrate_1]


@dataclass(frozen=True)
class HostRecord:
    """One host's outcome in one scan, as the store is asked to keep it."""

    host: str
    status: str
    items: Sequence[DriftItem] = ()
    snapshot_json: str | None = None
    snapshot_hash: str | None = None
    baseline_ids: Sequence[int] = ()
    message: str | None = None
    is_unknown: Callable[[Path], bool] | None = None
    hidden: Mapping[str, int] | None = None
    is_ignored: Callable[[Path], bool] | None = None


@dataclass(frozen=True)
class HostChange:
    opened: int
    closed: int
    open_items: int


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

    return True


class Store:
    """The history database. Open it with ``Store.open``; it is not thread-safe."""

    def __init__(self, db: sqlite_utils.Database, path: FsPath) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: FsPath, *, sweep: bool = True, create: bool = True) -> Store:
        """Open (creating it if ``create``) and migrate; StoreError if unusable."""
        if not create and (not path.exists() or path.stat().st_size == 0):
            # An empty file is no database yet: reading never makes it one.
            raise StoreError(f"{path}: no history here yet (no scan has written it)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"{path}: cannot open the database: {error}") from error

        store = cls(sqlite_utils.Database(connection), path)
        try:
            store._migrate()
            if sweep:
                store.sweep_interrupted()
        except sqlite3.DatabaseError as error:
            connection.close()
            raise StoreError(f"{path}: not a driftd database: {error}") from error

        return store

    def close(self) -> None:
        self.db.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; it holds the write lock from its first line.

        Nested, it joins the transaction around it.
        """
        if self.db.conn.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _version(self) -> int:
        if "meta" not in self.db.table_names():
            return 0
        rows = list(
            self.db.query("SELECT value FROM meta WHERE key = 'schema_version'")
        )

        if not rows:
            return 0
        try:
            return int(rows[0]["value"])
        except (TypeError, ValueError):
            raise StoreError(
                f"{self.path}: meta.schema_version is {rows[0]['value']!r}, not a "
                "number: not a database driftd wrote"
            ) from None

    def _migrate(self) -> None:
        current = self._version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: this database was written by a newer driftd "
                f"(schema {current}; this driftd knows up to {SCHEMA_VERSION}). "
                "Upgrade driftd, or point --db at another file."
            )
        if current == SCHEMA_VERSION:
            return

        with self.transaction():
            current = self._version()
            if "meta" not in self.db.table_names():
                self.db.table("meta").create({"key": str, "value": str}, pk="key")
            for step in MIGRATIONS[current:]:
                step(self.db)
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )

    # --- scans -----------------------------------------------------------------------

    def sweep_interrupted(self) -> list[int]:
        """Mark scans left ``running`` by a process that is gone as ``interrupted``."""
        running = list(
            self.db.query("SELECT id, pid FROM scans WHERE status = 'running'")
        )
        dead = [row["id"] for row in running if not pid_alive(row["pid"])]
        if dead:
            marks = ",".join("?" * len(dead))
            with self.transaction():
                self.db.execute(
                    f"UPDATE scans SET status = 'interrupted', finished_at = ? "  # noqa: S608
                    f"WHERE id IN ({marks}) AND status = 'running'",
                    [now(), *dead],
                )

        return dead

    def begin_scan(self, trigger: str, target: str) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO scans (started_at, status, trigger, target, pid, hosts, "
                "drifted, unchecked) VALUES (?, 'running', ?, ?, ?, 0, 0, 0)",
                [now(), trigger, target, os.getpid()],
            )

        return int(cursor.lastrowid or 0)

    def finish_scan(self, scan_id: int, status: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE scans SET status = ?, finished_at = ?, "
                "hosts = (SELECT count(*) FROM host_results WHERE scan_id = :id), "
                "drifted = (SELECT count(*) FROM host_results WHERE scan_id = :id "
                "  AND items > 0), "
                "unchecked = (SELECT count(*) FROM host_results WHERE scan_id = :id "
                "  AND status NOT IN ('ok')) "
                "WHERE id = :id".replace(":id", "?"),
                [status, now(), scan_id, scan_id, scan_id, scan_id],
            )

    # --- baseline versions -----------------------------------------------------------

    def baseline_version(
        self,
        file: str,
        content_hash: str,
        content: str,
        *,
        git_commit: str | None = None,
        author: str | None = None,
        reason: str | None = None,
    ) -> int:
        """The id of this content of this file, recorded as a new version if new."""
        found = list(
            self.db.query(
                "SELECT id FROM baseline_versions WHERE file = ? AND hash = ?",
                [file, content_hash],
            )
        )
        if found:
            return int(found[0]["id"])

        with self.transaction():
            number = next(
                self.db.query(
                    "SELECT coalesce(max(version), 0) + 1 AS n FROM baseline_versions "
                    "WHERE file = ?",
                    [file],
                )
            )["n"]
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO baseline_versions (file, version, hash, "
                "content, created_at, git_commit, author, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    file,
                    number,
                    content_hash,
                    _sqlite_text(content),
                    now(),
                    git_commit,
                    author,
                    reason,
                ],
            )

        if cursor.rowcount:
            return int(cursor.lastrowid or 0)

        return self.baseline_version(file, content_hash, content)

    def baseline_versions(self, file: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE file = ?", [file]) if file else ("", [])

        return list(
            self.db.query(
                "SELECT id, file, version, hash, created_at, git_commit, author, "  # noqa: S608
                f"reason FROM baseline_versions {where} ORDER BY file, version",
                args,
            )
        )

    def baseline_version_row(self, version_id: int) -> dict[str, Any] | None:
        rows = list(
            self.db.query("SELECT * FROM baseline_versions WHERE id = ?", [version_id])
        )

        return dict(rows[0]) if rows else None

    def baseline_content(self, file: str, version: int) -> str | None:
        rows = list(
            self.db.query(
                "SELECT content FROM baseline_versions WHERE file = ? AND version = ?",
                [file, version],
            )
        )

        return str(rows[0]["content"]) if rows else None

    # --- host results and episodes ---------------------------------------------------

    def _explain_id(self, hidden: Mapping[str, int]) -> int:
        data = encode({rule: count for rule, count in hidden.items() if count})
        digest = hashlib.sha256(data.encode()).hexdigest()
        self.db.execute(
            "INSERT OR IGNORE INTO explains (hash, data) VALUES (?, ?)", [digest, data]
        )
        row = next(self.db.query("SELECT id FROM explains WHERE hash = ?", [digest]))

        return int(row["id"])

    def _snapshot_id(self, host: str, content_hash: str, data: str) -> int:
        self.db.execute(
            "INSERT OR IGNORE INTO snapshots (host, hash, data) VALUES (?, ?, ?)",
            [host, content_hash, data],
        )
        row = next(
            self.db.query("SELECT id FROM snapshots WHERE hash = ?", [content_hash])
        )

        return int(row["id"])

    def record_host(self, scan_id: int, record: HostRecord) -> HostChange:
        """Keep one host's result and move its episodes, in one transaction.

        Episodes change only for hosts that were checked (``ok`` or
        ``partial``); an open episode whose path was not observed stays open.
        """
        stamp = now()
        opened = closed = 0
        with self.transaction():
            snapshot_id = None
            if record.snapshot_json and record.snapshot_hash:
                snapshot_id = self._snapshot_id(
                    record.host, record.snapshot_hash, record.snapshot_json
                )
            explain_id = None
            if record.hidden is not None:
                explain_id = self._explain_id(record.hidden)
            if record.status in CHECKED:
                opened, closed = self._move_episodes(scan_id, stamp, record)
            self.db.execute(
                "INSERT INTO host_results (scan_id, host, status, items, opened, "
                "closed, "
                "snapshot_id, explain_id, baselines, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    scan_id,
                    record.host,
                    record.status,
                    len(record.items),
                    opened,
                    closed,
                    snapshot_id,
                    explain_id,
                    ",".join(map(str, record.baseline_ids)) or None,
                    record.message,
                ],
            )

        return HostChange(opened, closed, len(record.items))

    def _move_episodes(
        self, scan_id: int, stamp: str, record: HostRecord
    ) -> tuple[int, int]:
        current = {
            row["path"]: row
            for row in self.db.query(
                "SELECT id, path, kind, expected, actual FROM episodes "
                "WHERE host = ? AND closed_at IS NULL",
                [record.host],
            )
        }
        opened = closed = 0
        seen: set[str] = set()
        for item in record.items:
            path = item.path_text
            if path in seen:
                continue
            seen.add(path)
            expected, actual = encode(item.expected), encode(item.actual)
            row = current.get(path)
            if row is not None and (row["kind"], row["expected"], row["actual"]) != (
                item.kind,
                expected,
                actual,
            ):
                # Another drift at the same path (0600 then 0700): the first
                # episode keeps the values it had; the new one starts here.
                self.db.execute(
                    "UPDATE episodes SET closed_at = ?, closed_scan = ?, "
                    "close_reason = 'replaced' WHERE id = ?",
                    [stamp, scan_id, row["id"]],
                )
                row = None
            if row is None:
                self.db.execute(
                    "INSERT INTO episodes (host, path, kind, expected, actual, "
                    "first_scan, "
                    "last_scan, first_seen, last_seen, seen_count) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    [
                        record.host,
                        path,
                        item.kind,
                        expected,
                        actual,
                        scan_id,
                        scan_id,
                        stamp,
                        stamp,
                    ],
                )
                opened += 1
            else:
                self.db.execute(
                    "UPDATE episodes SET kind = ?, expected = ?, actual = ?, "
                    "last_scan = ?, "
                    "last_seen = ?, seen_count = seen_count + 1 WHERE id = ?",
                    [item.kind, expected, actual, scan_id, stamp, row["id"]],
                )

        for path, row in current.items():
            if path in seen:
                continue
            where = parse_path(path)
            # Hidden by an ignore rule added since: not compared, so not resolved
            # (and no longer kept, so it would look unknown).
            ignored = record.is_ignored is not None and record.is_ignored(where)
            unknown = record.is_unknown is not None and record.is_unknown(where)
            if unknown and not ignored:
                continue
            self.db.execute(
                "UPDATE episodes SET closed_at = ?, closed_scan = ?, close_reason = ? "
                "WHERE id = ?",
                [stamp, scan_id, "ignored" if ignored else "resolved", row["id"]],
            )
            closed += 0 if ignored else 1  # "resolved" counts what came back

        return opened, closed

    def close_episodes(
        self, ids: Sequence[int], reason: str, who: str, note: str | None
    ) -> int:
        """Close open episodes by hand (accepted, remediated); returns how many."""
        if reason not in CLOSE_REASONS:
            raise ValueError(f"unknown close reason {reason!r}")
        count = 0
        with self.transaction():
            for episode_id in ids:
                cursor = self.db.execute(
                    "UPDATE episodes SET closed_at = ?, close_reason = ?, "
                    "closed_by = ?, "
                    "close_note = ? WHERE id = ? AND closed_at IS NULL",
                    [now(), reason, who, note, episode_id],
                )
                count += cursor.rowcount

        return count

    # --- reading ---------------------------------------------------------------------

    def open_episodes(
        self, host: str | None = None, path_glob: str | None = None
    ) -> list[dict[str, Any]]:
        where, args = ("AND host = ?", [host]) if host else ("", [])
        rows = self.db.query(
            "SELECT * FROM episodes WHERE closed_at IS NULL "  # noqa: S608
            f"{where} ORDER BY host, path",
            args,
        )

        return [_episode(r) for r in _filter_paths(rows, path_glob)]

    def history(
        self,
        host: str | None = None,
        since: str | None = None,
        path_glob: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Episodes seen or closed since ``since``, newest first."""
        clauses, args = [], []
        if host:
            clauses.append("host = ?")
            args.append(host)
        if since:
            clauses.append("(last_seen >= ? OR closed_at >= ?)")
            args += [since, since]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(
            f"SELECT * FROM episodes {where} "  # noqa: S608
            "ORDER BY coalesce(closed_at, last_seen) DESC, id DESC "
            + ("" if path_glob else "LIMIT ?"),
            args if path_glob else [*args, limit],
        )
        # A path glob is not SQL: the limit counts the episodes it lets through.
        kept = itertools.islice(_filter_paths(rows, path_glob), limit)

        return [_episode(r) for r in kept]

    def scan(self, scan_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM scans WHERE id = ?", [scan_id]))
        if not rows:
            return None

        scan = dict(rows[0])
        scan["results"] = list(
            self.db.query(
                "SELECT r.host, r.status, r.items, r.opened, r.closed, r.snapshot_id, "
                "r.baselines, r.message, x.data AS hidden FROM host_results r "
                "LEFT JOIN explains x ON x.id = r.explain_id "
                "WHERE r.scan_id = ? ORDER BY r.host",
                [scan_id],
            )
        )
        scan["episodes"] = [
            _episode(r)
            for r in self.db.query(
                "SELECT * FROM episodes WHERE first_scan <= ? AND last_scan >= ? "
                "OR closed_scan = ? ORDER BY host, path",
                [scan_id, scan_id, scan_id],
            )
        ]

        return scan

    def scans(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(
            self.db.query("SELECT * FROM scans ORDER BY id DESC LIMIT ?", [limit])
        )

    def last_snapshot(self, host: str) -> str | None:
        """The JSON of the newest snapshot kept for a host."""
        rows = list(
            self.db.query(
                "SELECT s.data FROM host_results r "
                "JOIN snapshots s ON s.id = r.snapshot_id "
                "WHERE r.host = ? ORDER BY r.id DESC LIMIT 1",
                [host],
            )
        )

        return str(rows[0]["data"]) if rows else None

    def snapshot(self, snapshot_id: int) -> str | None:
        rows = list(
            self.db.query("SELECT data FROM snapshots WHERE id = ?", [snapshot_id])
        )

        return str(rows[0]["data"]) if rows else None


def _sqlite_text(text: str) -> str:
    """Text SQLite can hold: bytes that were not UTF-8 become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _filter_paths(rows: Any, glob: str | None) -> Iterator[dict[str, Any]]:
    matcher = compile_glob(glob) if glob else None
    for row in rows:
        if matcher is None or matcher.matches(parse_path(row["path"])):
            yield row


def _episode(row: dict[str, Any]) -> dict[str, Any]:
    episode = dict(row)
    episode["expected"] = json.loads(row["expected"]) if row["expected"] else None
    episode["actual"] = json.loads(row["actual"]) if row["actual"] else None
    episode["state"] = row["close_reason"] or OPEN

    return episode
