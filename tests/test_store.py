"""History: episodes open once, persist as one row, close exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftd.compare import DriftItem
from driftd.store import SCHEMA_VERSION, HostRecord, Store, StoreError

ITEM = DriftItem(("packages", "telnetd"), "added", None, ["0.17-44"])
OTHER = DriftItem(("users", "mallory"), "added", None, {"uid": 1001})


def scan(store: Store, *records: HostRecord) -> int:
    scan_id = store.begin_scan("test", "all")
    for record in records:
        store.record_host(scan_id, record)
    store.finish_scan(scan_id, "complete")

    return scan_id


def test_a_drift_seen_in_500_scans_is_one_episode_closed_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.db")
    for _ in range(500):
        scan(store, HostRecord("web1", "ok", [ITEM]))

    [episode] = store.open_episodes("web1")
    assert episode["seen_count"] == 500

    last = scan(store, HostRecord("web1", "ok", []))
    scan(store, HostRecord("web1", "ok", []))

    [closed] = store.history("web1")
    assert closed["state"] == "resolved"
    assert closed["closed_scan"] == last
    assert store.open_episodes() == []


def test_hosts_not_checked_never_resolve_nor_invent_drift(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.db")
    scan(store, HostRecord("web1", "ok", [ITEM, OTHER]))

    scan(store, HostRecord("web1", "unreachable", message="ssh: connection refused"))
    scan(store, HostRecord("web1", "failed", message="boom"))
    scan(
        store,
        HostRecord("web1", "partial", [OTHER], is_unknown=lambda p: p[0] == "packages"),
    )

    still_open = {e["path"]: e["seen_count"] for e in store.open_episodes("web1")}
    assert still_open == {"packages.telnetd": 1, "users.mallory": 2}


def test_an_unchanged_host_adds_only_its_result_row(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.db")
    record = HostRecord(
        "web1", "ok", [ITEM], snapshot_json='{"a":1}', snapshot_hash="h1"
    )
    for _ in range(20):
        scan(store, record)

    counts = {
        table: store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
        for table in ("snapshots", "episodes", "host_results")
    }
    assert counts == {"snapshots": 1, "episodes": 1, "host_results": 20}


def test_a_database_from_a_newer_driftd_is_refused_clearly(tmp_path: Path) -> None:
    Store.open(tmp_path / "h.db").close()
    connection = sqlite3.connect(tmp_path / "h.db")
    connection.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        [str(SCHEMA_VERSION + 1)],
    )
    connection.commit()
    connection.close()

    with pytest.raises(StoreError, match="newer driftd"):
        Store.open(tmp_path / "h.db")


def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "h.db").write_text("hello, not sqlite\n" * 100)

    with pytest.raises(StoreError, match=r"not a driftd database|cannot open"):
        Store.open(tmp_path / "h.db")


WRITER = """
import sys
from driftd.compare import DriftItem
from driftd.store import HostRecord, Store
store = Store.open(__import__("pathlib").Path(sys.argv[1]))
n = 0
while True:
    scan_id = store.begin_scan("test", "all")
    for host in range(20):
        items = [DriftItem(("users", f"u{i}"), "added", None, i) for i in range(n % 7)]
        store.record_host(scan_id, HostRecord(f"h{host}", "ok", items))
        if n == 3 and host == 0:
            print("ready", flush=True)
    n += 1
"""


def test_kill_9_mid_scan_leaves_a_consistent_history(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    store = Store.open(db)

    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    statuses = {row["status"] for row in store.scans(1000)}
    assert "running" not in statuses
    assert "interrupted" in statuses
    for host in range(20):
        results = list(
            store.db.query(
                "SELECT opened, closed, items FROM host_results "
                "WHERE host = ? ORDER BY id",
                [f"h{host}"],
            )
        )
        opened = sum(r["opened"] for r in results) - sum(r["closed"] for r in results)
        assert opened == len(store.open_episodes(f"h{host}"))
        assert opened == (results[-1]["items"] if results else 0)
