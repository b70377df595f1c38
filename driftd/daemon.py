"""The daemon: scans on schedule, reloads baselines as they change, takes ad hoc scans.

A thin shell over the engine. The main thread owns the schedule, signals,
reloads and systemd's watchdog; one worker thread runs scans one at a time
(so a host is never in two scans at once); a socket thread takes requests
from ``driftd scan`` and ``driftd status``. Baselines and config are watched
with watchdog, debounced, and re-hashed on a timer too, since file events
can be lost.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import queue
import random
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path as FsPath
from types import FrameType
from typing import Any

import structlog

from driftd import config
from driftd.baseline import BaselineSet, is_layer_file
from driftd.collect import Target
from driftd.config import Settings
from driftd.errors import UserError
from driftd.scan import (
    DriftdError,
    ScanReport,
    inventory_source,
    load_baselines,
    open_store,
    run_scan,
    targets_for,
)

log = structlog.get_logger("driftd.daemon")

TICK = 0.5  # seconds between looks at the schedule, signals and files
DEBOUNCE = 0.5  # seconds of quiet after a file event before reloading
REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request line
STOP_BOUND = 25.0  # seconds a stopping daemon waits for the running scan
MAX_REQUEST = 64 * 1024


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- systemd ------------------------------------------------------------------------


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; does nothing when not run by systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog = int(usec) / 2_000_000 if usec.isdigit() else None
        self.last_ping = 0.0

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto("\n".join(lines).encode(), self.address)

    def ping(self) -> None:
        """WATCHDOG=1 at half the interval systemd asked for."""
        if self.watchdog and time.monotonic() - self.last_ping >= self.watchdog:
            self.send("WATCHDOG=1")
            self.last_ping = time.monotonic()


# --- watched files ------------------------------------------------------------------


def _fingerprint(paths: Iterator[FsPath]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with contextlib.suppress(OSError):
            digest.update(str(path).encode("utf-8", "surrogateescape"))
            digest.update(path.read_bytes())

    return digest.hexdigest()


class Watcher:
    """Marks the daemon dirty when a baseline or the config may have changed.

    The handler only sets an event, so it cannot fail; the observer is
    restarted if it dies, and a timer re-hashes everything regardless.
    """

    def __init__(self, directories: list[FsPath]) -> None:
        self.directories = directories
        self.dirty = threading.Event()
        self.last_event = 0.0
        self.observer: Any = None
        self.inodes: list[int] = []

    def _inodes(self) -> list[int]:
        found = []
        for directory in self.directories:
            try:
                found.append(directory.stat().st_ino)
            except OSError:
                found.append(0)

        return found

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                watcher.last_event = time.monotonic()
                watcher.dirty.set()

        self.inodes = self._inodes()
        self.observer = Observer()
        for directory in self.directories:
            if directory.is_dir():
                self.observer.schedule(Handler(), str(directory), recursive=True)
        self.observer.daemon = True
        self.observer.start()

    def supervise(self) -> None:
        """Restart a dead observer, or one whose directory was replaced wholesale."""
        dead = self.observer is not None and not self.observer.is_alive()
        if dead or self._inodes() != self.inodes:
            log.warning("watcher_restarted", observer_died=dead)
            self.stop()
            self.dirty.set()
            self.start()

    def settled(self) -> bool:
        """A burst of events is over: time to look at the files."""
        return self.dirty.is_set() and time.monotonic() - self.last_event >= DEBOUNCE

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)


# --- requests -----------------------------------------------------------------------


@dataclass
class Job:
    """A scan to run: scheduled hosts, or an ad hoc request waiting for its report."""

    hosts: list[str]
    trigger: str
    limit: str | None = None
    reply: queue.Queue[dict[str, Any]] | None = None


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    daemon: Daemon


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT  # for the request line; a scan's answer may take long

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST)
        except OSError:
            return  # a client that never said anything
        self.connection.settimeout(None)
        try:
            request = json.loads(line)
            answer = (
                self.server.daemon.answer(request)
                if isinstance(request, dict)
                else {"error": "bad request: a request is a JSON object"}
            )
            reply = json.dumps(answer, ensure_ascii=True, default=str)
        except (ValueError, TypeError, KeyError) as error:
            reply = json.dumps({"error": f"bad request: {error}"})
        with contextlib.suppress(OSError):
            self.wfile.write(reply.encode() + b"\n")


def ask(path: FsPath, request: Mapping[str, Any], timeout: float | None) -> Any:
    """Send one request to a running daemon; None if no daemon answers there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.settimeout(timeout)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as error:
        raise DriftdError(f"{path}: cannot talk to the daemon: {error}") from error

    if not data.endswith(b"\n"):
        raise DriftdError(f"{path}: the daemon closed the connection without an answer")

    return json.loads(data)


# --- the daemon ---------------------------------------------------------------------


@dataclass
class Daemon:
    """One driftd daemon process; ``run`` blocks until SIGTERM or SIGINT."""

    config_path: str | None
    overrides: Mapping[str, Any]
    interval: int | None = None
    settings: Settings = field(init=False)
    baselines: BaselineSet = field(init=False)
    targets: list[Target] = field(default_factory=list)
    due: dict[str, float] = field(default_factory=dict)
    jobs: queue.Queue[Job] = field(default_factory=queue.Queue)
    stopping: threading.Event = field(default_factory=threading.Event)
    reload_requested: threading.Event = field(default_factory=threading.Event)
    notifier: Notifier = field(default_factory=Notifier)
    state: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- loading ---------------------------------------------------------------------

    def load_settings(self) -> Settings:
        return config.apply(config.load(self.config_path), dict(self.overrides))

    def watched(self) -> Iterator[FsPath]:
        if self.config_path:
            yield FsPath(self.config_path)
        root = self.settings.baselines
        try:
            found = [p for p in root.rglob("*") if is_layer_file(p)]
        except OSError as error:
            # Unreadable for now: the fingerprint changes, the reload says why.
            log.warning("baselines_unlistable", problem=str(error))
            found = [root]
        yield from found

    def load(self) -> None:
        """Everything from scratch: used at start, where any error is fatal."""
        self.settings = self.load_settings()
        self.baselines = load_baselines(self.settings)
        self.targets = self.resolve()
        self.fingerprint = _fingerprint(self.watched())
        self.schedule_all()

    def resolve(self) -> list[Target]:
        with inventory_source(self.settings) as inventory:
            return targets_for(inventory, None)

    def reload(self, why: str) -> None:
        """Config and baselines again; what fails to parse leaves the old in force."""
        fingerprint = _fingerprint(self.watched())
        if why != "signal" and fingerprint == self.fingerprint:
            return

        self.notifier.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"
        )
        try:
            settings = self.load_settings()
            baselines = BaselineSet.load(settings.baselines)
        except Exception as error:  # noqa: BLE001 (whatever a file holds, the old stays)
            problems = str(error).splitlines() or [type(error).__name__]
            for problem in problems:
                log.error("reload_failed", reason=why, problem=problem)  # noqa: TRY400
            self.state["reload_failed"] = {"at": now(), "problems": problems}
        else:
            self.state.pop("reload_failed", None)
            with self.lock:
                self.settings, self.baselines = settings, baselines
                with contextlib.suppress(DriftdError):
                    self.targets = self.resolve()
                self.schedule_all(keep=True)
            log.info("baseline_reloaded", reason=why, layers=len(baselines.layers))
        self.fingerprint = fingerprint
        self.notifier.send("READY=1")

    # --- schedule --------------------------------------------------------------------

    def interval_of(self, target: Target) -> int:
        if self.interval:
            return self.interval
        groups = self.settings.group_intervals
        chosen = [groups[g] for g in target.groups if g in groups]

        return min(chosen) if chosen else self.settings.interval

    def schedule_all(self, *, keep: bool = False) -> None:
        """First runs spread over a jitter window, so a fleet is not hit at once."""
        start = time.monotonic()
        names = {t.name for t in self.targets}
        self.due = {h: t for h, t in self.due.items() if keep and h in names}
        for target in self.targets:
            if target.name not in self.due:
                window = self.interval_of(target) * self.settings.jitter
                self.due[target.name] = start + random.uniform(0, window)  # noqa: S311

    def next_due(self, target: Target) -> float:
        interval = self.interval_of(target)
        spread = interval * self.settings.jitter / 2

        return time.monotonic() + interval + random.uniform(-spread, spread)  # noqa: S311

    def enqueue_due(self, busy: bool) -> None:
        if busy or not self.jobs.empty():
            return
        moment = time.monotonic()
        hosts = [t.name for t in self.targets if self.due.get(t.name, 0) <= moment]
        if hosts:
            self.jobs.put(Job(hosts, "schedule", ",".join(hosts)))

    # --- running scans ---------------------------------------------------------------

    def work(self) -> None:
        """The worker thread: scans one job at a time until the daemon stops."""
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=TICK)
            except queue.Empty:
                continue
            self.run_job(job)

    def run_job(self, job: Job) -> None:
        with self.lock:
            settings, baselines = self.settings, self.baselines
            by_name = {t.name: t for t in self.targets}
        self.state["current"] = {
            "trigger": job.trigger,
            "hosts": job.hosts,
            "since": now(),
        }
        answer: dict[str, Any]
        try:
            report = run_scan(
                settings,
                limit=job.limit,
                trigger=job.trigger,
                cancelled=self.stopping.is_set,
                baselines=lambda: self.current_baselines(baselines),
            )
            answer = {"report": report.to_dict()}
            self.remember(report, by_name)
        except DriftdError as error:
            log.error("scan_failed", trigger=job.trigger, problem=str(error))  # noqa: TRY400 (a user-facing error, no traceback)
            answer = {"error": str(error)}
        except Exception as error:  # the worker must outlive any scan
            log.exception("scan_crashed", trigger=job.trigger)
            answer = {"error": f"the scan failed: {type(error).__name__}: {error}"}
        finally:
            self.state["current"] = None
            for host in job.hosts:
                if host in by_name:
                    self.due[host] = self.next_due(by_name[host])
        if job.reply is not None:
            job.reply.put(answer)

    def current_baselines(self, loaded: BaselineSet) -> BaselineSet:
        """The loaded baselines, unless their files changed since (an accept that
        ran just before this scan, ahead of the watcher): then the files, if
        they parse. The main loop's reload stays the one that logs and notifies."""
        try:
            return loaded.fresh()
        except (UserError, ValueError, OSError):
            return loaded

    def remember(self, report: ScanReport, by_name: Mapping[str, Target]) -> None:
        """What status shows: each group's last scan and what it found."""
        groups: dict[str, Any] = self.state.setdefault("groups", {})
        for host in report.hosts:
            target = by_name.get(host.host)
            for group in (*(target.groups if target else ()), "all"):
                entry = groups.setdefault(group, {"hosts": {}})
                entry["last_scan"] = {"id": report.scan_id, "at": now()}
                entry["hosts"][host.host] = {
                    "status": host.status,
                    "drift": len(host.items),
                }
        drifted = sum(1 for h in report.hosts if h.items)
        unchecked = sum(1 for h in report.hosts if h.status != "ok")
        summary = (
            f"scan {report.scan_id} {report.status}: {len(report.hosts)} hosts, "
            f"{drifted} drifted, {unchecked} not checked"
        )
        self.state["last"] = {"summary": summary, "at": now()}
        self.notifier.send(f"STATUS={summary}")

    # --- requests --------------------------------------------------------------------

    def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op != "scan":
            return {"error": f"unknown request {op!r}"}

        mine = served_by(self.settings)
        theirs = {k: request.get(k) for k in mine}
        if theirs != mine:
            return {"declined": "it serves other settings", **mine}
        reply: queue.Queue[dict[str, Any]] = queue.Queue()
        limit = request.get("limit")
        self.jobs.put(Job([], "request", limit, reply))
        log.info("scan_requested", limit=limit)

        return reply.get()

    def status(self) -> dict[str, Any]:
        return {
            "running": True,
            "pid": os.getpid(),
            "started": self.state.get("started"),
            "current": self.state.get("current"),
            "last": self.state.get("last"),
            "groups": self.state.get("groups", {}),
            "hosts": len(self.targets),
            "db": str(self.settings.db),
            "reload_failed": self.state.get("reload_failed"),
        }

    # --- the main loop ---------------------------------------------------------------

    def serve(self) -> _Server:
        path = self.settings.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket() and ask(path, {"op": "status"}, timeout=5) is not None:
            raise DriftdError(f"{path}: another driftd daemon is running")
        path.unlink(missing_ok=True)
        old_mask = os.umask(0o117)
        try:
            server = _Server(str(path), _Handler)
        finally:
            os.umask(old_mask)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, -1, grp.getgrnam("driftd").gr_gid)
        server.daemon = self

        return server

    def run(self) -> None:
        self.install_signals()  # a stop asked for during start-up is kept
        self.load()
        store = open_store(self.settings)  # marks scans a crash left running
        store.close()
        server = self.serve()
        watcher = Watcher([self.settings.baselines, *self.config_dirs()])
        watcher.start()
        threads = [
            threading.Thread(target=server.serve_forever, name="socket", daemon=True),
            threading.Thread(target=self.work, name="worker", daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.state["started"] = now()
        log.info(
            "daemon_started", hosts=len(self.targets), socket=str(self.settings.socket)
        )
        self.notifier.send("READY=1", f"STATUS=watching {len(self.targets)} hosts")

        try:
            self.loop(watcher)
        finally:
            self.stopping.set()
            log.info("daemon_stopping")
            self.notifier.send("STOPPING=1")
            threads[1].join(timeout=STOP_BOUND)
            self.refuse_waiting()
            server.shutdown()
            server.server_close()
            self.settings.socket.unlink(missing_ok=True)
            watcher.stop()
            log.info("daemon_stopped", scan_cut_off=threads[1].is_alive())

    def refuse_waiting(self) -> None:
        """Requests still queued when the daemon stops get an answer, not silence."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job.reply is not None:
                job.reply.put({"error": "the daemon stopped before running this scan"})

    def config_dirs(self) -> list[FsPath]:
        return [FsPath(self.config_path).resolve().parent] if self.config_path else []

    def loop(self, watcher: Watcher) -> None:
        last_reconcile = time.monotonic()
        while not self.stopping.is_set():
            try:
                last_reconcile = self.turn(watcher, last_reconcile)
            except Exception:  # the main loop must outlive any one turn
                log.exception("main_loop_error")
                self.stopping.wait(TICK)

    def turn(self, watcher: Watcher, last_reconcile: float) -> float:
        """One pass of the main loop; returns when it last reconciled."""
        self.notifier.ping()
        watcher.supervise()
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload("signal")
        elif watcher.settled():
            watcher.dirty.clear()
            self.reload("file_changed")
        elif time.monotonic() - last_reconcile >= self.settings.reconcile:
            last_reconcile = time.monotonic()
            self.reload("reconcile")
        self.enqueue_due(busy=self.state.get("current") is not None)
        self.stopping.wait(TICK)

        return last_reconcile

    def install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            self.stopping.set()

        def hangup(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)


def served_by(settings: Settings) -> dict[str, Any]:
    """What a scan request must share with the daemon to be run by it: the same
    files (however their paths are spelled) and the same scan settings."""
    scope = {
        "sections": list(settings.sections),
        "files": sorted(settings.files),
        "ignore": list(settings.ignore_rules),
        "become": settings.become,
    }

    return {
        "db": os.path.realpath(settings.db),
        "baselines": os.path.realpath(settings.baselines),
        "inventory": (
            os.path.realpath(inventory)
            if (inventory := settings.inventory) and os.path.exists(inventory)
            else inventory
        ),
        "scope": hashlib.sha256(json.dumps(scope).encode()).hexdigest(),
    }


def request_scan(settings: Settings, limit: str | None) -> dict[str, Any] | None:
    """Ask a running daemon to scan; None when no daemon serves these settings."""
    request = {"op": "scan", "limit": limit, **served_by(settings)}
    answer = ask(settings.socket, request, timeout=None)
    if answer is None:
        return None
    if "declined" in answer:
        theirs = (
            f"inventory {answer.get('inventory') or 'localhost'}, "
            f"baselines {answer.get('baselines')}"
        )
        if answer.get("db") == os.path.realpath(settings.db):
            raise DriftdError(
                f"the driftd daemon at {settings.socket} writes {settings.db} with "
                f"{theirs} and its own scan settings: scan with the same settings "
                "(its --config), or pass --no-daemon to scan here anyway"
            )
        log.info("daemon_declined", socket=str(settings.socket), daemon=theirs)
        return None
    if "error" in answer:
        raise DriftdError(str(answer["error"]))

    return dict(answer["report"])


def daemon_status(settings: Settings) -> dict[str, Any] | None:
    answer = ask(settings.socket, {"op": "status"}, timeout=10)

    return dict(answer) if answer else None
