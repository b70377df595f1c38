"""Figure 5: the daemon's memory over many scan cycles of localhost.

``driftd daemon --interval 1`` runs against this machine (its default
inventory: localhost, local connection) with its own config, database,
baselines (the example all.yml and a captured hosts/localhost.yml) and a
socket in the bench's temp dir. TMPDIR and HOME point into that dir too, so
the ansible-runner directories it leaves (``driftd-run-*``) and Ansible's own
local temp files (``~/.ansible``) are its own and countable even while other
driftd runs use /tmp. Ports and mounts are ignored: test fleets on this
machine open ports and mount overlays while it runs.

Cycles are counted from the database's scans table (finished scans). VmRSS
and VmHWM come from /proc/PID/status: at the start of cycle 1 (the first scan
row appears), then after every N cycles.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    DRIFTD,
    BenchError,
    Figure,
    check,
    checkpointed_size,
    child_env,
    dir_bytes,
    run_timed,
    source,
    stop_tree,
)

CYCLE_BOUND = 60.0  # seconds one cycle may take before the run is cut short
STOP_BOUND = 45.0  # the README promises an exit within about 30 s of SIGTERM


@dataclass
class Sample:
    cycle: int
    seconds: float
    rss_kb: int
    hwm_kb: int
    fds: int
    threads: int
    run_dirs: int
    db_bytes: int
    tmp_bytes: int


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kb(text: str) -> int:
    return int(text.split(maxsplit=1)[0])


def _cycles(db: Path) -> tuple[int, int]:
    """(scans begun, scans finished) as the daemon's database says."""
    if not db.exists():
        return 0, 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        begun, finished = connection.execute(
            "SELECT count(*), count(finished_at) FROM scans"
        ).fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        connection.close()
    return int(begun), int(finished)


def _host_statuses(db: Path) -> str:
    """How the daemon's host results ended, e.g. ``500 ok``."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute(
            "SELECT status, count(*) FROM host_results GROUP BY status ORDER BY 2 DESC"
        ).fetchall()
    finally:
        connection.close()
    return ", ".join(f"{count} {status}" for status, count in rows) or "none"


def _run_dirs(tmp: Path) -> int:
    return sum(1 for p in tmp.glob("driftd-run-*") if p.is_dir())


def _global_run_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("driftd-run-*")}  # noqa: S108


@dataclass
class DaemonRun:
    """One daemon under watch: its files, its process and what was sampled."""

    work: Path
    cycles: int
    every: int
    log: Any
    samples: list[Sample] = field(default_factory=list)
    cut_short: str = ""
    stop_seconds: float = 0.0

    @property
    def home(self) -> Path:
        return self.work / "daemon"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def db(self) -> Path:
        return self.home / "state" / "driftd.db"

    def prepare(self) -> tuple[list[Any], dict[str, str]]:
        """Config, baselines (example + captured localhost), an empty history."""
        baselines = self.home / "baselines"
        for path in (self.tmp, self.db.parent, baselines):
            path.mkdir(parents=True)
        shutil.copy(source() / "baselines" / "all.yml", baselines / "all.yml")
        config = self.home / "driftd.yml"
        config.write_text(
            f"db: {self.db}\nbaselines: {baselines}\n"
            f"socket: {self.home / 'driftd.sock'}\n"
            "# ports and mounts on this machine come and go with other test runs\n"
            "ignore: [ports, facts.mounts]\n"
        )
        home = self.home / "home"
        home.mkdir()
        env = child_env(self.work, {"TMPDIR": str(self.tmp), "HOME": str(home)})
        common: list[Any] = ["--config", config, "--db", self.db]
        common += ["--baselines", baselines]
        capture = [DRIFTD, "baseline", "capture", "localhost", *common]
        check(run_timed(capture, env, timeout=300), "driftd baseline capture")
        for suffix in ("", "-wal", "-shm"):  # start on an empty history
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        return common, env

    def sample(self, pid: int, cycle: int, started: float) -> Sample:
        status = _status(pid)
        sample = Sample(
            cycle,
            time.monotonic() - started,
            _kb(status["VmRSS"]),
            _kb(status["VmHWM"]),
            len(os.listdir(f"/proc/{pid}/fd")),
            int(status["Threads"]),
            _run_dirs(self.tmp),
            checkpointed_size(self.db),
            dir_bytes(self.tmp) + dir_bytes(self.home / "home"),
        )
        self.samples.append(sample)
        return sample

    def watch(self, process: subprocess.Popen[bytes]) -> None:
        """Sample at the start of cycle 1, after it, then every N cycles."""
        started = time.monotonic()
        while _cycles(self.db)[0] < 1:  # cycle 1 has begun: its scan row exists
            if process.poll() is not None:
                raise BenchError(f"the daemon exited {process.returncode} at start")
            if time.monotonic() > started + 120:
                raise BenchError("the daemon did not start a scan within 120 s")
            time.sleep(0.05)
        self.sample(process.pid, 0, started)
        deadline = started + 60 + self.cycles * CYCLE_BOUND
        next_sample, progress, finished = 1, (time.monotonic(), 0), 0
        while finished < self.cycles:
            time.sleep(0.2)
            finished = _cycles(self.db)[1]
            if finished >= min(next_sample, self.cycles):
                sample = self.sample(process.pid, finished, started)
                self.log(
                    f"  cycle {finished}: VmRSS {sample.rss_kb / 1024:.1f} MiB, "
                    f"{sample.fds} fds, {sample.run_dirs} run dirs"
                )
                next_sample = (finished // self.every + 1) * self.every
            if finished != progress[1]:
                progress = (time.monotonic(), finished)
            if process.poll() is not None:
                self.cut_short = f"the daemon exited {process.returncode}"
            elif time.monotonic() > deadline or time.monotonic() > progress[0] + 120:
                self.cut_short = "cut short by the time bound"
            if self.cut_short:
                self.cut_short += f" after cycle {finished}"
                return

    def run(self) -> None:
        common, env = self.prepare()
        argv = [str(a) for a in (DRIFTD, "daemon", "--interval", "1", *common)]
        with (self.home / "daemon.log").open("wb") as log_file:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=source(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self.watch(process)
            finally:
                self.stop_seconds = stop_tree(process, grace=STOP_BOUND)


def figures(work: Path, *, cycles: int, every: int, log: Any) -> list[Figure]:
    run = DaemonRun(work, cycles, every, log)
    global_before = _global_run_dirs()
    run.run()
    left = _run_dirs(run.tmp)
    global_new = len(_global_run_dirs() - global_before)
    begun, finished = _cycles(run.db)
    db_bytes = checkpointed_size(run.db)
    statuses = _host_statuses(run.db)
    samples = run.samples
    first, last = samples[0], samples[-1]
    after_one = next((s for s in samples if s.cycle >= 1), last)
    mib = 1024
    note = f"; {run.cut_short}" if run.cut_short else ""
    per_cycle = (last.seconds - first.seconds) / max(1, last.cycle)
    trend = ", ".join(f"{s.cycle}:{s.rss_kb / mib:.1f}" for s in samples)
    growth = (last.rss_kb - first.rss_kb) / mib
    steady = (last.rss_kb - after_one.rss_kb) / mib
    most_dirs = max(left, *(s.run_dirs for s in samples))
    peak = max(last.hwm_kb, *(s.rss_kb for s in samples))
    tmp_trend = ", ".join(f"{s.cycle}:{s.tmp_bytes}" for s in samples)
    return [
        Figure(
            "daemon_rss_mb",
            peak / mib,
            unit="MiB",
            target=("<=", 60),
            context=(
                f"VmHWM (peak resident) over {last.cycle} cycles of localhost "
                f"= {peak * 1024 / 1e6:.1f} MB decimal; highest sampled VmRSS "
                f"{max(s.rss_kb for s in samples) / mib:.1f} MiB{note}"
            ),
            details=[
                f"VmRSS by cycle (MiB): {trend}",
                f"{per_cycle:.1f} s per cycle; threads {first.threads}->"
                f"{last.threads}, open fds {first.fds}->{last.fds}; host results: "
                f"{statuses}",
            ],
        ),
        Figure(
            "daemon_rss_growth_mb",
            growth,
            unit="MiB",
            target=("<=", 10),
            context=(
                f"VmRSS start of cycle 1 {first.rss_kb / mib:.1f} -> after cycle "
                f"{last.cycle} {last.rss_kb / mib:.1f} MiB (from the end of cycle "
                f"{after_one.cycle}: {steady:+.1f} MiB){note}"
            ),
        ),
        Figure(
            "daemon_run_dirs",
            float(most_dirs),
            target=("<=", 1),
            shown=str(most_dirs),
            target_shown="<=1",
            context=(
                f"most driftd-run-* dirs seen at once in the daemon's TMPDIR; "
                f"{left} left after it stopped"
            ),
            details=[
                f"bytes in the daemon's TMPDIR and HOME by cycle: {tmp_trend}",
                f"new /tmp/driftd-run-* dirs over the run (any process): {global_new}",
                f"the daemon stopped {run.stop_seconds:.1f} s after SIGTERM",
            ],
        ),
        Figure(
            "daemon_db_bytes_per_cycle",
            (last.db_bytes - after_one.db_bytes) / max(1, last.cycle - after_one.cycle),
            unit="B",
            context=(
                f"db growth per real unchanged localhost scan, cycles "
                f"{after_one.cycle}..{last.cycle} (size after wal_checkpoint)"
            ),
            details=[
                f"db {after_one.db_bytes:,} -> {last.db_bytes:,} bytes between "
                f"cycles {after_one.cycle} and {last.cycle}; {db_bytes:,} bytes "
                f"after stop for {finished} scans ({begun - finished} unfinished)"
            ],
        ),
    ]
