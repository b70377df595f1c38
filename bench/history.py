"""Figure 4: the history database at scale, and what an unchanged host costs it.

A database with 1,000 hosts x 1,000 scans (1,000,000 host results) and
100,000 drift episodes (``--history-scale`` scales hosts and episodes) is
built with driftd's own schema (Store.open), then bulk-loaded with
executemany in big transactions. Episodes are spread unevenly over hosts,
repeat paths over time, and about 10% are open; paths, values, timestamps
and close reasons look like driftd's own. Snapshot rows are small stand-ins
(no query below reads them).

The queries are the CLI commands themselves, run inside this process (the
click command the console script runs, output caught in memory, imports
warm): ``driftd history --host H``, ``driftd drift`` and ``driftd drift
--host H``, each over 20 different hosts with drift, chosen at random. So
each time covers reading the config, opening the database (migration check,
interrupted-scan sweep), the query and the table printed. The bare Store
calls are shown beside them. CLI start-up is the wall time of ``driftd drift
--host H`` as a process minus the same command in-process.
"""

from __future__ import annotations

import contextlib
import io
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    DRIFTD,
    BenchError,
    Figure,
    check,
    checkpointed_size,
    child_env,
    median,
    run_timed,
    spread,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCAN_EVERY = timedelta(hours=1)
SCAN_TOOK = timedelta(seconds=95)
CHUNK = 100_000

PACKAGE_WORDS = (
    "openssl",
    "curl",
    "nginx",
    "bash",
    "sudo",
    "systemd",
    "libc6",
    "vim",
    "tzdata",
    "rsync",
)
FILES = (
    "/etc/ssh/sshd_config",
    "/etc/sudoers",
    "/etc/hosts",
    "/etc/crontab",
    "/etc/fstab",
)
SERVICES = (
    "ssh",
    "cron",
    "nginx",
    "postgresql",
    "docker",
    "chrony",
    "rsyslog",
    "unattended-upgrades",
)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scan_time(scan: int) -> datetime:
    return T0 + SCAN_EVERY * (scan - 1)


def _path_and_values(rng: random.Random) -> tuple[str, str, str, str]:
    """A drift item as driftd records it: path, kind, expected, actual (JSON)."""
    pick = rng.random()
    if pick < 0.45:
        name = f"{rng.choice(PACKAGE_WORDS)}{rng.randint(0, 60)}"
        old = f'["{rng.randint(1, 9)}.{rng.randint(0, 30)}-{rng.randint(1, 5)}"]'
        kind = rng.choice(("changed", "changed", "added", "removed"))
        new = f'["{rng.randint(1, 9)}.{rng.randint(0, 30)}-{rng.randint(1, 5)}+b1"]'
        return (
            f"packages.{name}",
            kind,
            "null" if kind == "added" else old,
            "null" if kind == "removed" else new,
        )
    if pick < 0.75:
        path = rng.choice(FILES)
        key = rng.choice(("checksum", "checksum", "size", "mode"))
        values = {
            "checksum": (
                f'"{rng.getrandbits(256):064x}"',
                f'"{rng.getrandbits(256):064x}"',
            ),
            "size": (str(rng.randint(100, 9000)), str(rng.randint(100, 9000))),
            "mode": ('"0644"', '"0664"'),
        }[key]
        return (f'files["{path}"].{key}', "changed", *values)
    if pick < 0.9:
        name = f"{rng.choice(SERVICES)}.service"
        return (f'services["{name}"].state', "changed", '"running"', '"stopped"')
    user = f"user{rng.randint(1, 40)}"
    return (
        f"users.{user}",
        "added",
        "null",
        f'{{"gecos": "", "gid": 1001, "home": "/home/{user}", "shell": "/bin/bash"}}',
    )


def _episodes(
    hosts: list[str], count: int, scans: int, rng: random.Random
) -> list[tuple[Any, ...]]:
    """Rows for the episodes table, oldest first; ~10% open, no path open twice."""
    weights = [rng.paretovariate(1.5) for _ in hosts]  # a few hosts drift a lot
    owners = rng.choices(range(len(hosts)), weights=weights, k=count)
    open_paths: set[tuple[int, str]] = set()
    rows = []
    for owner in owners:
        path, kind, expected, actual = _path_and_values(rng)
        first = rng.randint(1, scans)
        is_open = rng.random() < 0.1 and (owner, path) not in open_paths
        if is_open:
            open_paths.add((owner, path))
            last = scans
        else:
            last = min(scans - 1, first + int(rng.expovariate(1 / 20)))
            first = min(first, last)
        seen = last - first + 1
        closed = reason = by = note = closed_scan = None
        if not is_open:
            closed_scan = last + 1
            closed = _stamp(_scan_time(closed_scan) + timedelta(seconds=40))
            reason = rng.choices(
                ("resolved", "accepted", "remediated"), weights=(85, 10, 5)
            )[0]
            if reason != "resolved":
                by, note = "alice", "change ticket CHG-1234: approved upgrade"
        rows.append(
            (
                hosts[owner], path, kind, expected, actual, first, last,
                _stamp(_scan_time(first) + timedelta(seconds=40)),
                _stamp(_scan_time(last) + timedelta(seconds=40)),
                seen, closed, closed_scan, reason, by, note,
            )
        )  # fmt: skip
    rows.sort(key=lambda r: (r[5], r[0]))
    return rows


def _results(
    hosts: list[str], scans: int, rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    """Host result rows, scan by scan (ids follow insertion order, as in driftd)."""
    statuses = ("ok",) * 96 + ("partial",) * 2 + ("unreachable", "failed")
    for scan in range(1, scans + 1):
        for number, host in enumerate(hosts):
            status = rng.choice(statuses)
            checked = status in ("ok", "partial")
            message = None
            if status == "partial":
                message = "not collected: services; services: timed out"
            elif status == "unreachable":
                message = "Failed to connect to the host via ssh: Connection timed out"
            elif status == "failed":
                message = "nothing was collected"
            yield (
                scan, host, status, rng.randint(0, 3) if checked else 0,
                0, 0, number * 3 + 1 + scan * 3 // (scans + 1) if checked else None,
                1 if checked else None, f"1,{number + 2}", message,
            )  # fmt: skip


def build(
    path: Path, *, hosts: int, scans: int, episodes: int, log: Any
) -> dict[str, Any]:
    """Create the schema with driftd, then fill it; returns what was built."""
    from driftd.store import Store

    started = time.perf_counter()
    Store.open(path).close()
    rng = random.Random(1000)  # noqa: S311 (test data)
    names = [f"web{n:04d}.dc{n % 3 + 1}.example.net" for n in range(hosts)]
    connection = sqlite3.connect(str(path), isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-262144")

        def bulk(
            sql: str, rows: Iterator[tuple[Any, ...]] | list[tuple[Any, ...]]
        ) -> None:
            batch: list[tuple[Any, ...]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= CHUNK:
                    connection.execute("BEGIN")
                    connection.executemany(sql, batch)
                    connection.execute("COMMIT")
                    batch = []
            if batch:
                connection.execute("BEGIN")
                connection.executemany(sql, batch)
                connection.execute("COMMIT")

        bulk(
            "INSERT INTO scans (id, started_at, finished_at, status, trigger, target, "
            "pid, hosts, drifted, unchecked) VALUES (?, ?, ?, 'complete', 'schedule', "
            "'all', 4242, ?, ?, ?)",
            [
                (s, _stamp(_scan_time(s)), _stamp(_scan_time(s) + SCAN_TOOK),
                 hosts, hosts // 9, hosts // 25)
                for s in range(1, scans + 1)
            ],
        )  # fmt: skip
        bulk(
            "INSERT INTO baseline_versions (id, file, version, hash, content, "
            "created_at, git_commit, author, reason) VALUES (?, ?, 1, ?, ?, ?, NULL, "
            "NULL, NULL)",
            [(1, "all.yml", "0" * 64, "expect: {}\n", _stamp(T0))]
            + [
                (
                    n + 2,
                    f"hosts/{name}.yml",
                    f"{n + 1:064x}",
                    "snapshot: {}\n",
                    _stamp(T0),
                )
                for n, name in enumerate(names)
            ],
        )
        bulk(
            "INSERT INTO explains (id, hash, data) VALUES (1, ?, ?)",
            [("e" * 64, '{"facts.date_time": 1, "facts.uptime_seconds": 1}')],
        )
        bulk(
            "INSERT INTO snapshots (id, host, hash, data) VALUES (?, ?, ?, ?)",
            (
                (
                    n * 3 + k + 1,
                    name,
                    f"{n * 3 + k:064x}",
                    '{"data": {}, "unknown": []}',
                )
                for n, name in enumerate(names)
                for k in range(3)
            ),
        )
        log(f"  loading {hosts * scans:,} host results")
        bulk(
            "INSERT INTO host_results (scan_id, host, status, items, opened, closed, "
            "snapshot_id, explain_id, baselines, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _results(names, scans, rng),
        )
        log(f"  loading {episodes:,} episodes")
        rows = _episodes(names, episodes, scans, rng)
        bulk(
            "INSERT INTO episodes (host, path, kind, expected, actual, first_scan, "
            "last_scan, first_seen, last_seen, seen_count, closed_at, closed_scan, "
            "close_reason, closed_by, close_note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        counts = {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("scans", "host_results", "episodes")
        }
        counts["open"] = connection.execute(
            "SELECT count(*) FROM episodes WHERE closed_at IS NULL"
        ).fetchone()[0]
    finally:
        connection.close()
    per_host: dict[str, int] = {}
    for row in rows:
        per_host[row[0]] = per_host.get(row[0], 0) + 1
    counts["seconds"] = time.perf_counter() - started
    counts["bytes"] = path.stat().st_size
    counts["names"] = names
    counts["per_host"] = per_host

    return counts


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _in_process(argv: list[str]) -> tuple[float, int]:
    """Run one driftd command inside this process: (seconds, lines printed).

    The same click command the console script runs, with its output caught
    in memory, so only driftd's own work is timed (no interpreter start-up,
    no imports once warm).
    """
    from driftd.cli import main

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        main.main(argv, prog_name="driftd", standalone_mode=False)
    seconds = time.perf_counter() - start

    return seconds, out.getvalue().count("\n")


def _store_times(db: Path, sample: list[str]) -> dict[str, list[float]]:
    """The bare Store queries behind the commands, for the details."""
    from driftd.store import Store

    times: dict[str, list[float]] = {"one": [], "all": [], "history": []}
    store = Store.open(db)
    try:
        for host in sample:
            times["one"].append(_timed(partial(store.open_episodes, host))[0])
            times["all"].append(_timed(store.open_episodes)[0])
            times["history"].append(_timed(partial(store.history, host))[0])
    finally:
        store.close()

    return times


def query_figures(
    work: Path, *, hosts: int, scans: int, episodes: int, runs: int, log: Any
) -> list[Figure]:
    db = work / "history.db"
    built = build(db, hosts=hosts, scans=scans, episodes=episodes, log=log)
    log(
        f"  built in {built['seconds']:.0f} s: {built['host_results']:,} host results, "
        f"{built['episodes']:,} episodes ({built['open']:,} open), "
        f"{built['bytes'] / 2**20:.0f} MiB"
    )
    rng = random.Random(20)  # noqa: S311
    # Hosts with drift, chosen at random: typical ones, not only the worst.
    sample = rng.sample(sorted(built["per_host"]), min(runs, len(built["per_host"])))
    shape = (
        f"{built['host_results']:,} host results, {built['episodes']:,} episodes "
        f"({built['open']:,} open)"
    )
    config = work / "empty.yml"
    config.write_text("{}\n")
    common = ["--db", str(db), "--config", str(config)]
    commands: dict[str, Callable[[str], list[str]]] = {
        "drift_host": lambda h: ["drift", "--host", h, *common],
        "drift_all": lambda _h: ["drift", *common],
        "history_host": lambda h: ["history", "--host", h, *common],
        "history_all": lambda _h: ["history", *common],
    }
    for make in commands.values():  # warm-up: imports, page cache
        _in_process(make(sample[0]))
    times: dict[str, list[float]] = {name: [] for name in commands}
    lines: dict[str, list[int]] = {name: [] for name in commands}
    for host in sample:
        for name, make in commands.items():
            seconds, printed = _in_process(make(host))
            times[name].append(seconds)
            lines[name].append(printed)
    bare = _store_times(db, sample)

    env = child_env(work)
    walls = []
    for number, host in enumerate(sample[: max(3, runs // 2) + 1]):
        argv: list[Any] = [DRIFTD, *commands["drift_host"](host)]
        timed = check(run_timed(argv, env, timeout=60), "driftd drift --host")
        if number:  # the first run is a warm-up
            walls.append(timed.wall)
    startup = median(walls) - median(times["drift_host"])

    ms = 1000
    n = len(sample)

    def rows(name: str) -> str:
        return f"~{median(lines[name]) - 1:.0f} rows"

    return [
        Figure(
            "history_host_ms",
            median(times["history_host"]) * ms,
            unit="ms",
            target=("<=", 50),
            context=f"`driftd history --host H` in-process, {rows('history_host')}; "
            f"{shape}",
            details=[
                f"in-process over {n} hosts: {_ms(times['history_host'])} ms; "
                f"Store.history(host) alone: median "
                f"{median(bare['history']) * ms:.2f} ms",
                f"`driftd history` of every host (LIMIT 1000; not a target): median "
                f"{median(times['history_all']) * ms:.1f} ms, range "
                f"{_ms(times['history_all'])} ms",
                f"database: {built['bytes'] / 2**20:.0f} MiB, built in "
                f"{built['seconds']:.0f} s",
            ],
        ),
        Figure(
            "history_drift_all_ms",
            median(times["drift_all"]) * ms,
            unit="ms",
            target=("<=", 50),
            context=f"`driftd drift` in-process, {rows('drift_all')} (every host)",
            details=[
                f"in-process x{n}: {_ms(times['drift_all'])} ms; "
                f"Store.open_episodes() alone: median "
                f"{median(bare['all']) * ms:.2f} ms"
            ],
        ),
        Figure(
            "history_drift_host_ms",
            median(times["drift_host"]) * ms,
            unit="ms",
            target=("<=", 50),
            context=f"`driftd drift --host H` in-process, {rows('drift_host')}",
            details=[
                f"in-process over {n} hosts: {_ms(times['drift_host'])} ms; "
                f"Store.open_episodes(host) alone: median "
                f"{median(bare['one']) * ms:.2f} ms"
            ],
        ),
        Figure(
            "cli_drift_host_startup_ms",
            startup * ms,
            unit="ms",
            context=(
                f"`driftd drift --host H` wall {median(walls) * ms:.0f} ms minus "
                f"the same command in-process "
                f"{median(times['drift_host']) * ms:.1f} ms"
            ),
            details=[f"driftd drift --host walls: {_ms(walls)} ms"],
        ),
    ]


def _ms(values: list[float]) -> str:
    return spread([v * 1000 for v in values])


# --- growth per unchanged scan ------------------------------------------------------


def growth_figures(work: Path, *, count: int, log: Any) -> list[Figure]:
    """Bytes the database grows by per unchanged host result, measured on the file
    after PRAGMA wal_checkpoint(TRUNCATE), over ``count`` record_host calls.

    The host result is what driftd.scan._Job.judge records for a host that did
    not change: the same snapshot (JSON and hash) as last time, the same 5 open
    drift items (so its episodes are updated, not opened), the same baseline
    versions and ignore-rule counts. Two shapes: a fleet (100 hosts per scan,
    one scan row shared) and one host alone (a scan row per host result, as
    the daemon scanning localhost writes).
    """
    from bench.comparison import drifted, expected_for, host_snapshot
    from driftd.compare import compare
    from driftd.scan import pruned
    from driftd.store import HostRecord, Store

    snapshot = host_snapshot()
    expected = expected_for(snapshot)
    actual = drifted(snapshot, 5)
    comparison = compare(expected, actual, explain=True)
    kept = pruned(actual, expected.ignore)
    text, digest = kept.to_json(), kept.content_hash()

    def record(host: str) -> HostRecord:
        return HostRecord(
            host=host,
            status="ok",
            items=comparison.items,
            snapshot_json=text,
            snapshot_hash=digest,
            baseline_ids=[1, 2],
            is_unknown=kept.is_unknown,
            hidden=comparison.hidden,
        )

    figures = []
    for shape, per_scan in (("fleet", 100), ("single", 1)):
        store = Store.open(work / f"growth-{shape}.db")
        try:
            store.baseline_version("all.yml", "a" * 64, "expect: {}\n")
            store.baseline_version("hosts/web.yml", "b" * 64, "snapshot: {}\n")
            hosts = [f"web{n:03d}.example.net" for n in range(per_scan)]
            records = {h: record(h) for h in hosts}

            def scan(
                s: Store = store,
                h: list[str] = hosts,
                r: dict[str, HostRecord] = records,
            ) -> None:
                scan_id = s.begin_scan("schedule", "all")
                for host in h:
                    s.record_host(scan_id, r[host])
                s.finish_scan(scan_id, "complete")

            for _ in range(max(3, 300 // per_scan)):  # first sight, then unchanged
                scan()
            before = checkpointed_size(store.path)
            started = time.perf_counter()
            for _ in range(count // per_scan):
                scan()
            seconds = time.perf_counter() - started
            after = checkpointed_size(store.path)
        finally:
            store.close()
        per_result = (after - before) / count
        log(f"  {shape}: {after - before:,} bytes over {count} results")
        if shape == "fleet":
            name = "db_bytes_per_unchanged_host"
            context = (
                f"{count} unchanged host results, {per_scan} hosts per scan, "
                f"file size after wal_checkpoint(TRUNCATE)"
            )
        else:
            name = "db_bytes_per_unchanged_1host_scan"
            context = f"{count} scans of one unchanged host (scan row included)"
        figures.append(
            Figure(
                name,
                per_result,
                unit="B",
                target=("<=", 200),
                context=context,
                details=[
                    f"{shape}: {before:,} -> {after:,} bytes for {count} results "
                    f"({seconds / count * 1000:.2f} ms per record_host incl. scan rows)"
                ],
            )
        )
    return figures


def figures(
    work: Path, *, scale: float, runs: int, growth_count: int, log: Any
) -> list[Figure]:
    hosts = max(10, round(1000 * scale))
    scans = 1000
    episodes = max(100, round(100_000 * scale))
    if runs < 1:
        raise BenchError("need at least one run")
    log(f"figure 4: history of {hosts} hosts x {scans} scans, {episodes:,} episodes")
    result = query_figures(
        work, hosts=hosts, scans=scans, episodes=episodes, runs=runs, log=log
    )
    result += growth_figures(work, count=growth_count, log=log)
    return result
