"""Shared pieces: figures, timed subprocesses, the environment, machine facts.

Every figure is a ratio or a time measured side by side in the same run; the
machine is shared and noisy, so absolute times are context, not verdicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DRIFTD = BIN / "driftd"
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
PYTHON = Path(sys.executable)
LOOPBACK = "127.0.0.1"
FACTS_FIXTURE = "tests/fixtures/facts/debian-12.5-digitalocean_adhoc-setup.json"
# What a run measures: the checkout until freeze_source() copies it.
_SOURCE = [ROOT]


def source() -> Path:
    """Where driftd, its playbooks, the example baselines and tests/fleet.py are
    read from: the run's frozen copy once taken, else the checkout."""
    return _SOURCE[0]


def freeze_source(work: Path) -> str:
    """Copy driftd/, playbooks/, baselines/, tests/fleet.py and the facts fixture
    into ``work/src`` and use that copy from now on, in this process (sys.path)
    and in every child (PYTHONPATH, ahead of the editable install's finder).

    Others may edit the checkout while a run takes its hour: every figure of
    one run then measures the same code. Returns a digest of the copied
    driftd/ and playbooks/ that RESULTS.md records.
    """
    target = work / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("driftd", "playbooks", "baselines"):
        shutil.copytree(ROOT / name, target / name, ignore=skip)
    for name in ("tests/__init__.py", "tests/fleet.py", FACTS_FIXTURE):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, target / name)
    sys.path.insert(0, str(target))
    _SOURCE[0] = target
    _check_children_see(target, work)

    return _digest(target, ("driftd", "playbooks"))


def _digest(root: Path, parts: Sequence[str]) -> str:
    """A short sha256 over the names and contents of the files under ``parts``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.parts[len(root.parts)] in parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())

    return digest.hexdigest()[:12]


def _check_children_see(target: Path, work: Path) -> None:
    """Raise BenchError unless a child imports driftd from ``target``."""
    where = subprocess.run(
        [PYTHON, "-c", "import driftd; print(driftd.__file__)"],
        env=child_env(work),
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.strip()
    if not Path(where).is_relative_to(target):
        raise BenchError(f"children import driftd from {where!r}, not from {target}")


@dataclass
class Figure:
    """One benchmark figure: a value, an optional target, and what explains it.

    ``target`` is ``(op, bound)`` with op ``<=`` or ``>=``; None means the
    figure is informational. ``shown`` overrides how the value is printed
    (e.g. ``1/87`` for a fraction).
    """

    name: str
    value: float | None
    unit: str = ""
    target: tuple[str, float] | None = None
    context: str = ""
    shown: str | None = None
    target_shown: str | None = None
    details: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "error"
        if self.target is None:
            return "info"
        op, bound = self.target
        good = self.value <= bound if op == "<=" else self.value >= bound

        return "met" if good else "missed"

    def value_text(self) -> str:
        if self.value is None:
            return "n/a"
        if self.shown is not None:
            return self.shown
        return f"{_number(self.value)}{(' ' + self.unit) if self.unit else ''}"

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        if self.target_shown is not None:
            return self.target_shown
        op, bound = self.target
        unit = f" {self.unit}" if self.unit else ""
        return f"{op}{_number(bound)}{unit}"

    def line(self, widths: Sequence[int] = (34, 14, 14)) -> str:
        name_w, value_w, target_w = widths
        text = (
            f"{self.name:<{name_w}}  {self.value_text():>{value_w}}  "
            f"target {self.target_text():<{target_w}}  {self.verdict:<6}"
        )
        if self.context:
            text += f"  {self.context}"
        return text


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min..max of samples, for context."""
    if not values:
        return "-"
    return f"{_number(min(values))}..{_number(max(values))}"


# --- the environment every child process gets ---------------------------------------


def child_env(work: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for driftd and ansible-playbook children.

    Bytecode goes to a cache under the bench's temp dir (as an installed
    package would have it), not into the repository; no config file from the
    caller's environment; no systemd notify socket.
    """
    env = dict(os.environ)
    for name in ("PYTHONDONTWRITEBYTECODE", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(name, None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    if source() != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(source()), env.get("PYTHONPATH", "")) if p
        )
    env["DRIFTD_CONFIG"] = ""
    env["ANSIBLE_NOCOLOR"] = "True"
    env.update(extra or {})

    return env


@dataclass
class Timed:
    """One timed child process: wall seconds, CPU seconds of it and its waited
    descendants, exit status, the tail of its output and when it started."""

    wall: float
    cpu: float
    code: int
    out: str
    err: str
    started: float


def run_timed(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str],
    *,
    timeout: float,
    cwd: Path | None = None,
    keep_output: bool = True,
) -> Timed:
    """Run a command to its end (bounded by ``timeout``) and time it.

    The child runs in its own session, in the source dir (so ``python -c``
    finds the measured driftd first); if it times out or the bench is
    interrupted, it and everything it started are stopped (stop_tree).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    start = time.perf_counter()
    out_mode = subprocess.PIPE if keep_output else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(a) for a in argv],
        env=dict(env),
        cwd=cwd or source(),
        stdin=subprocess.DEVNULL,
        stdout=out_mode,
        stderr=out_mode,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        stop_tree(process)
        out, err = process.communicate()
        code, err = -999, f"timed out after {timeout:g} s | {err or ''}"
    except BaseException:
        stop_tree(process)
        raise
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    return Timed(wall, cpu, code, out or "", err or "", started)


# --- stopping what the bench started ------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``, mapped to its start time (clock ticks)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            fields = _stat_fields(child)
            if fields and child not in found:
                found[child] = fields[19]
                stack.append(child)
    return found


def _signal_known(processes: Mapping[int, str], number: int) -> int:
    """Send a signal to each process still alive with the same start time."""
    alive = 0
    for pid, started in processes.items():
        fields = _stat_fields(pid)
        if fields is None or fields[19] != started or fields[0] == "Z":
            continue
        alive += 1
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)
    return alive


def stop_tree(process: subprocess.Popen[Any], grace: float = 30.0) -> float:
    """Stop a child started in its own session, and everything it started.

    SIGTERM first (driftd cancels its Ansible run on it, ansible-playbook
    stops its forks), SIGKILL after ``grace`` seconds; descendants that left
    the child's process group (ansible-runner runs ansible-playbook in a
    session of its own) are found by parent pid beforehand and stopped by
    pid. Returns the seconds it took.
    """
    started = time.monotonic()
    if process.poll() is not None:
        return 0.0
    tree = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = started + grace
    while process.poll() is None and time.monotonic() < deadline:
        tree |= descendants(process.pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    settle = time.monotonic() + 5
    while _signal_known(tree, signal.SIGTERM) and time.monotonic() < settle:
        time.sleep(0.2)
    _signal_known(tree, signal.SIGKILL)

    return time.monotonic() - started


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (the reason is reported)."""


def check(timed: Timed, what: str, ok: Sequence[int] = (0,)) -> Timed:
    if timed.code not in ok:
        tail = (timed.err or timed.out).strip().splitlines()[-8:]
        raise BenchError(f"{what} exited {timed.code}: " + " | ".join(tail))
    return timed


def json_events(text: str) -> list[dict[str, Any]]:
    """driftd's JSON log lines (stderr off a terminal), anything else skipped."""
    events = []
    for line in text.splitlines():
        if line.startswith("{") and '"event"' in line:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def stamp_seconds(text: str) -> float:
    """An ISO UTC timestamp from driftd's log as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def work_dir(prefix: str = "driftd-bench-") -> Iterator[Path]:
    """A private temp dir under /tmp, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def dir_bytes(path: Path) -> int:
    """Bytes used by the files under ``path`` (apparent sizes)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def checkpointed_size(db: Path) -> int:
    """The database file's size once its WAL has been written back."""
    connection = sqlite3.connect(str(db), timeout=30)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        connection.close()
    return db.stat().st_size


# --- the machine --------------------------------------------------------------------


def _first(path: str, key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    from driftd.baseline import git_commit

    commit = git_commit(ROOT / "driftd")
    if commit is None:
        return "?"
    head, _, dirty = commit.partition("+")

    return f"{head[:7]} (driftd/ modified)" if dirty else head[:7]


def machine(digest: str = "") -> dict[str, str]:
    """The facts RESULTS.md records about where and with what it ran."""
    memory_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    try:
        memory = f"{int(memory_kb) / 1024 / 1024:.1f} GiB"
    except ValueError:
        memory = "?"
    load = os.getloadavg()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "memory": memory,
        "kernel": platform.release(),
        "load at start": " ".join(f"{x:.2f}" for x in load),
        "python": platform.python_version(),
        "ansible-core": _version("ansible-core"),
        "ansible-runner": _version("ansible-runner"),
        "deepdiff": _version("deepdiff"),
        "sqlite": sqlite3.sqlite_version,
        "driftd": f"{_version('driftd')} at {_git_commit()}"
        + (f", driftd/ and playbooks/ as measured: sha256 {digest}" if digest else ""),
    }
