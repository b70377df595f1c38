"""The real daemon as a subprocess: schedule, reloads, ad hoc scans, signals."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Driftd
from tests.fleet import Fleet

FAILING_PIN = "expect:\n  users.root.shell: /bin/no-such-shell\n"
PASSING_PIN = "expect:\n  users.root.uid: 0\n"


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.closed = False
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        while not self.closed:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.splitlines()]

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def private_tmp(driftd: Driftd) -> Path:
    path = driftd.home / "tmp"
    path.mkdir(exist_ok=True)

    return path


class DaemonProcess:
    """``driftd daemon`` in a subprocess, its JSON log lines collected."""

    def __init__(self, driftd: Driftd, interval: int, env: dict[str, str]) -> None:
        argv = [
            sys.executable,
            "-m",
            "driftd",
            "daemon",
            "--interval",
            str(interval),
            "--db",
            str(driftd.db),
            "--baselines",
            str(driftd.baselines),
        ]
        if driftd.inventory:
            argv += ["-i", driftd.inventory]
        if driftd.config:
            argv += ["--config", driftd.config]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            # Its temp dirs live with the test: one killed on purpose leaves them.
            env={**os.environ, "TMPDIR": str(private_tmp(driftd)), **env},
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == event]

    def stop(
        self, signum: int = signal.SIGTERM, timeout: float = 40
    ) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started


def wait_for(what: Callable[[], Any], timeout: float = 60, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or what}")


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.swp.tmp")
    temporary.write_text(text)
    temporary.rename(path)


@pytest.fixture
def daemon_env(
    driftd: Driftd, tmp_path: Path
) -> Iterator[tuple[Driftd, Notifications]]:
    config = tmp_path / "driftd.yml"
    config.write_text(f"socket: {tmp_path / 'driftd.sock'}\nreconcile: 2\n")
    driftd.config = str(config)
    (driftd.baselines / "all.yml").write_text(PASSING_PIN)
    notifications = Notifications(tmp_path / "notify.sock")
    yield driftd, notifications
    notifications.close()


LOCAL = "ansible_connection=local"


def daemon_socket(driftd: Driftd) -> str:
    assert driftd.config is not None
    return str(Path(driftd.config).parent / "driftd.sock")


def ask_raw(driftd: Driftd, request: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(daemon_socket(driftd))
        client.sendall(request)
        return client.makefile("rb").readline().decode()


def scans(db: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT id, trigger, status FROM scans ORDER BY id"
        ).fetchall()


def test_the_daemon_schedules_reloads_serves_and_stops(
    daemon_env: tuple[Driftd, Notifications],
) -> None:
    driftd, notify = daemon_env
    all_yml = driftd.baselines / "all.yml"
    daemon = DaemonProcess(
        driftd, 3, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    )
    try:
        wait_for(lambda: "READY=1" in notify.lines(), 30, "READY=1")

        # Scheduled scans land in history.
        wait_for(
            lambda: len(daemon.named("scan_finished")) >= 2, 60, "two scheduled scans"
        )
        assert [t for _, t, _ in scans(driftd.db)][:2] == ["schedule", "schedule"]
        assert any(line.startswith("STATUS=scan ") for line in notify.lines())
        assert "WATCHDOG=1" in notify.lines()
        status = driftd("status", "--json", check=0).json()
        assert (
            status["running"]
            and status["groups"]["all"]["hosts"]["localhost"]["status"] == "ok"
        )

        # An atomic rename is one reload; an ad hoc scan goes through the daemon.
        reloads = len(daemon.named("baseline_reloaded"))
        write_atomically(all_yml, FAILING_PIN)
        wait_for(lambda: len(daemon.named("baseline_reloaded")) > reloads, 15, "reload")
        time.sleep(3)
        assert len(daemon.named("baseline_reloaded")) == reloads + 1
        requested = len(daemon.named("scan_requested"))
        result = driftd("scan", "--json", check=2)
        assert result.json()["hosts"][0]["items"][0]["path"] == "users.root.shell"
        assert len(daemon.named("scan_requested")) == requested + 1

        # A touch that changes nothing reloads nothing.
        os.utime(all_yml)
        time.sleep(3)
        assert len(daemon.named("baseline_reloaded")) == reloads + 1

        # A broken baseline keeps the old one in force, and the daemon running.
        write_atomically(all_yml, "expect:\n  users.root.shell: [unclosed\n")
        failed = wait_for(lambda: daemon.named("reload_failed"), 15, "reload_failed")
        assert "all.yml:" in failed[0]["problem"]
        assert daemon.process.poll() is None
        assert driftd("scan", "--json", check=2).json()["hosts"][0]["items"]
        assert (
            "all.yml:"
            in driftd("status", "--json", check=0).json()["reload_failed"]["problems"][
                0
            ]
        )
        assert "previous version stays in force" in driftd("status", check=0).out

        # The socket answers what is not a request, and drops who never asks.
        for garbage in (b"[]\n", b"5\n", b"{not json\n"):
            assert "bad request" in ask_raw(driftd, garbage)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(daemon_socket(driftd))
            idle.settimeout(30)
            assert idle.recv(1) == b""  # closed by the daemon, not held forever

        # The same database with another inventory is refused, not scanned here.
        other = driftd.home / "other.ini"
        other.write_text(
            f"localhost {LOCAL} ansible_python_interpreter={sys.executable}\n"
        )
        elsewhere = dataclasses.replace(driftd, inventory=str(other))
        refused = elsewhere("scan", check=1)
        assert "--no-daemon" in refused.err and str(driftd.db) in refused.err
        spelled = driftd.db.parent / ".." / driftd.db.parent.name / driftd.db.name
        refused = dataclasses.replace(elsewhere, db=spelled)("scan", check=1)
        assert "--no-daemon" in refused.err

        # Vim's way: the original renamed to a backup, then the new file written.
        reloads = len(daemon.named("baseline_reloaded"))
        all_yml.rename(all_yml.with_name("all.yml~"))
        all_yml.write_text(PASSING_PIN)
        wait_for(lambda: len(daemon.named("baseline_reloaded")) > reloads, 15, "reload")
        time.sleep(3)
        assert len(daemon.named("baseline_reloaded")) == reloads + 1
        assert driftd("scan", "--json", check=0).json()["hosts"][0]["items"] == []
        assert driftd("status", "--json", check=0).json()["reload_failed"] is None

        # A baselines directory replaced wholesale is caught by the reconcile timer.
        reloads = len(daemon.named("baseline_reloaded"))
        shutil.move(driftd.baselines, driftd.baselines.with_name("old-baselines"))
        driftd.baselines.mkdir()
        (driftd.baselines / "all.yml").write_text(FAILING_PIN)
        wait_for(
            lambda: len(daemon.named("baseline_reloaded")) > reloads, 20, "reconcile"
        )

        # SIGHUP reloads, as systemd's ExecReload sends it.
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(x.startswith("RELOADING=1") for x in notify.lines()),
            15,
            "RELOADING",
        )
        assert any(x.startswith("MONOTONIC_USEC=") for x in notify.lines())

        # SIGTERM during a scan: cancelled, recorded, and out within the bound.
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftd",
                "scan",
                "--db",
                str(driftd.db),
                "--baselines",
                str(driftd.baselines),
                "--config",
                str(driftd.config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = len(daemon.named("scan_started"))
        wait_for(lambda: len(daemon.named("scan_started")) > started, 30, "scan start")
        time.sleep(0.5)
        code, seconds = daemon.stop()
        client.wait(timeout=120)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()

    assert code == 0, "".join(daemon.raw[-20:])
    assert seconds < 30
    assert "STOPPING=1" in notify.lines()
    statuses = {status for _, _, status in scans(driftd.db)}
    assert "running" not in statuses
    assert scans(driftd.db)[-1][2] in ("interrupted", "complete")
    # An interrupted scan is never reported as a clean one to the client.
    assert client.returncode == (1 if scans(driftd.db)[-1][2] == "interrupted" else 2)
    assert not any("Traceback" in line for line in daemon.raw)
    assert driftd("status", check=3).out.startswith("driftd daemon: not running")


def test_a_scan_left_running_by_a_crash_shows_as_interrupted(
    daemon_env: tuple[Driftd, Notifications],
) -> None:
    driftd, _ = daemon_env
    daemon = DaemonProcess(driftd, 2, {})
    wait_for(lambda: daemon.named("scan_started"), 60, "scan start")
    daemon.process.kill()
    daemon.process.wait()
    assert scans(driftd.db)[-1][2] == "running"

    again = DaemonProcess(driftd, 3600, {})
    try:
        wait_for(lambda: daemon_started(again), 30, "restart")
        assert scans(driftd.db)[0][2] == "interrupted"
        history = driftd("show", str(scans(driftd.db)[0][0]), check=0)
        assert "interrupted" in history.out
    finally:
        again.stop()


def daemon_started(daemon: DaemonProcess) -> bool:
    return bool(daemon.named("daemon_started"))


def test_the_daemon_scans_the_ssh_fleet_on_schedule(
    fleet: Fleet, tmp_path: Path
) -> None:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    (baselines / "all.yml").write_text(PASSING_PIN)
    config = tmp_path / "driftd.yml"
    config.write_text(f"socket: {tmp_path / 's.sock'}\ngroup_intervals: {{web: 2}}\n")
    inventory = fleet.write_inventory(tmp_path / "hosts", {"web": fleet.names[:1]})
    driftd = Driftd(tmp_path, tmp_path / "d.db", baselines, str(inventory), str(config))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftd",
            "daemon",
            "-i",
            str(inventory),
            "--config",
            str(config),
            "--db",
            str(driftd.db),
            "--baselines",
            str(baselines),
        ],
        stdout=(tmp_path / "daemon.log").open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        web = fleet.names[0]

        def web_scanned_twice() -> bool:
            if not driftd.db.exists():
                return False
            try:
                with sqlite3.connect(driftd.db) as connection:
                    rows = connection.execute(
                        "SELECT count(*) FROM host_results "
                        "WHERE host = ? AND status = 'ok'",
                        [web],
                    ).fetchone()
            except sqlite3.OperationalError:
                return False  # the daemon has created the file, not yet the tables
            return bool(rows[0] >= 2)

        wait_for(web_scanned_twice, 120, "the web group scanned twice")
        status = driftd("status", "--json", check=0).json()
        assert status["groups"]["web"]["hosts"] == {web: {"status": "ok", "drift": 0}}
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_systemd_accepts_the_unit_file(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "systemd" / "driftd.service").read_text()
    driftd_bin = Path(sys.executable).parent / "driftd"
    local = tmp_path / "driftd.service"
    local.write_text(unit.replace("/opt/driftd/bin/driftd", str(driftd_bin)))

    done = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, check=False
    )

    problems = [line for line in done.stderr.splitlines() if "driftd.service" in line]
    assert done.returncode == 0 and not problems, done.stderr
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
