"""Tests of the SSH test-fleet harness itself (tests/fleet.py).

They need root, sshd, unshare and overlayfs; elsewhere they skip with the reason
Fleet.available() gives.  Ports: this module's fleet uses DRIFTD_FLEET_PORT_BASE
(default 22220) + 100 and the throwaway fleets + 200, so a session-wide fleet on
the default range can run alongside.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fleet as fleet_module
from tests.fleet import Fleet, FleetCommandError, default_port_base

AVAILABLE, REASON = Fleet.available()
needs_fleet = pytest.mark.skipif(not AVAILABLE, reason=f"SSH fleet: {REASON}")

ANSIBLE = Path(sys.executable).parent / "ansible"
FQDN = "import socket; print(socket.getfqdn())"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """A started two-host fleet shared by this module's tests."""
    if not AVAILABLE:
        pytest.skip(f"SSH fleet: {REASON}")
    with Fleet(2, port_base=default_port_base() + 100) as started:
        yield started


def ssh(fleet: Fleet, name: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run COMMAND on host NAME over real SSH with the fleet key."""
    return subprocess.run(
        fleet.ssh_command(name, command),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def refuses(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:PORT is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_each_host_answers_ssh_with_its_own_hostname(fleet: Fleet) -> None:
    for name in fleet.names:
        done = ssh(fleet, name, "hostname")

        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == name


def test_run_executes_inside_the_host(fleet: Fleet) -> None:
    name = fleet.names[1]

    assert fleet.run(name, "hostname").stdout.strip() == name
    assert fleet.run(name, "cat", "/etc/hostname").stdout.strip() == name
    with pytest.raises(FleetCommandError, match="No such file"):
        fleet.run(name, "cat", "/nonexistent/driftd")
    assert fleet.run(name, "false", check=False).returncode == 1


def test_names_resolve_locally_and_dns_stays_on_loopback(fleet: Fleet) -> None:
    first, second = fleet.names

    found = fleet.run(first, "getent", "hosts", second).stdout.split()
    fqdn = fleet.run(second, fleet.python_interpreter, "-c", FQDN).stdout.strip()
    resolv = (fleet.root(first) / "etc/resolv.conf").read_text()

    assert found == ["127.0.1.2", second]
    assert fqdn == second
    nameservers = [
        ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")
    ]
    assert nameservers == ["127.0.0.1"]


def test_a_file_written_in_one_host_is_seen_nowhere_else(fleet: Fleet) -> None:
    first, second = fleet.names
    probe = "etc/driftd-fleet-probe.conf"

    (fleet.root(first) / probe).write_text("drifted\n")

    assert ssh(fleet, first, f"cat /{probe}").stdout == "drifted\n"
    assert (fleet.upper(first) / probe).read_text() == "drifted\n"
    assert ssh(fleet, second, f"test -e /{probe}").returncode == 1
    assert not (fleet.root(second) / probe).exists()
    assert not (Path("/") / probe).exists()


def test_a_change_made_over_ssh_stays_in_that_host(fleet: Fleet) -> None:
    first, second = fleet.names

    done = ssh(fleet, second, "echo 'Port 2222' >> /etc/ssh/sshd_config")

    assert done.returncode == 0, done.stderr
    assert (
        (fleet.root(second) / "etc/ssh/sshd_config").read_text().endswith("Port 2222\n")
    )
    assert "Port 2222" not in (fleet.root(first) / "etc/ssh/sshd_config").read_text()
    assert "Port 2222" not in Path("/etc/ssh/sshd_config").read_text()


def test_stop_host_refuses_and_start_host_brings_it_back(fleet: Fleet) -> None:
    first, second = fleet.names
    port = fleet.port(second)

    fleet.stop_host(second)

    assert refuses(port)
    assert not fleet.is_up(second)
    assert ssh(fleet, second, "true").returncode == 255
    assert ssh(fleet, first, "hostname").stdout.strip() == first

    fleet.start_host(second)

    assert fleet.is_up(second)
    assert ssh(fleet, second, "hostname").stdout.strip() == second


def test_ansible_pings_every_host(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet.write_inventory(tmp_path / "hosts.ini", {"web": [fleet.names[0]]})
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "NO_COLOR": "1"}

    done = subprocess.run(
        [str(ANSIBLE), "all", "-i", str(inventory), "-m", "ping"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    for name in fleet.names:
        assert f"{name} | SUCCESS" in done.stdout, done.stdout

    listed = subprocess.run(
        [str(ANSIBLE), "web", "-i", str(inventory), "--list-hosts"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert listed.stdout.split()[-1] == fleet.names[0]


def test_write_inventory_rejects_unknown_hosts_and_groups(tmp_path: Path) -> None:
    unstarted = Fleet(2)

    with pytest.raises(KeyError, match="nohost"):
        unstarted.write_inventory(tmp_path / "hosts.ini", {"web": ["nohost"]})
    with pytest.raises(ValueError, match="group"):
        unstarted.write_inventory(tmp_path / "hosts.ini", {"bad-group": []})


@needs_fleet
def test_teardown_leaves_no_mount_process_or_file() -> None:
    spare = Fleet(2, port_base=default_port_base() + 200, prefix="spare").start()
    base = spare.base
    roots = [spare.root(name) for name in spare.names]
    lingering = subprocess.Popen(
        ["chroot", str(roots[0]), "sleep", "300"], start_new_session=True
    )
    assert ssh(spare, spare.names[1], "true").returncode == 0

    spare.teardown()
    spare.teardown()  # idempotent

    assert lingering.wait(timeout=10) != 0
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(base) not in mountinfo
    assert not base.exists()
    for name in spare.names:
        assert refuses(default_port_base() + 200 + spare.names.index(name) + 1)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        assert not root.startswith(str(base)), f"pid {pid} still rooted in {root}"


@needs_fleet
def test_a_failed_start_tears_itself_down() -> None:
    port_base = default_port_base() + 200
    bases_before = set(Path(tempfile.gettempdir()).glob("driftd-fleet-*"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port_base + 2))
        squatter.listen()
        broken = Fleet(2, port_base=port_base, prefix="broken")

        with pytest.raises(RuntimeError, match="already in use"):
            broken.start()

    assert "broken0" not in Path("/proc/self/mountinfo").read_text()
    assert set(Path(tempfile.gettempdir()).glob("driftd-fleet-*")) == bases_before


@needs_fleet
def test_reap_stale_cleans_up_after_a_killed_owner() -> None:
    port = default_port_base() + 201
    script = (
        "import time; from tests.fleet import Fleet;"
        f"f = Fleet(1, port_base={port - 1}, prefix='orphan').start();"
        "print(f.base, flush=True); time.sleep(300)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    base = Path(owner.stdout.readline().strip())
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    assert str(base) in Path("/proc/self/mountinfo").read_text()
    assert not refuses(port)

    reaped = Fleet.reap_stale()

    assert base in reaped
    assert str(base) not in Path("/proc/self/mountinfo").read_text()
    assert not base.exists()
    assert refuses(port)


def test_available_explains_why_not_without_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    ok, reason = fleet_module._available.__wrapped__()

    assert not ok
    assert "root" in reason


def test_names_and_ports_follow_the_port_base() -> None:
    planned = Fleet(3, port_base=30000, prefix="web")

    assert planned.names == ["web01", "web02", "web03"]
    assert [planned.port(n) for n in planned.names] == [30001, 30002, 30003]
    with pytest.raises(ValueError, match="out of range"):
        Fleet(2, port_base=65534)
