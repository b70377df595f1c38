"""A real SSH test fleet on loopback, for tests that drive Ansible end to end.

Each host of a :class:`Fleet` is a chroot of an overlay mount of this machine's own
root filesystem, with its own sshd listening on 127.0.0.1 and its own hostname (a
UTS namespace).  Writes inside a host land in that host's overlay upper directory,
so hosts drift apart from each other and from the real machine without touching
either.

Layout under the fleet's base directory (a fresh ``mkdtemp`` by default)::

    BASE/.driftd-fleet            marker: owner pid, so a later run can reap leftovers
    BASE/id_ed25519[.pub]         the fleet's client key pair (root logs in with it)
    BASE/ssh_host_ed25519_key     the fleet's sshd host key, copied into each host
    BASE/NAME/{upper,work,root}   overlay layers; ``root`` is the host's /
    BASE/NAME/sshd.log            sshd's stderr (-e), quoted when sshd fails to start

Inside each root: /proc (bind), /dev (recursive bind, made a slave so unmounting it
cannot propagate back to the real /dev), /sys (read-only bind), and tmpfs on /run
and /tmp.  What the hosts share with the machine (on purpose, no network
namespaces here): the network stack, so every host sees every listening port, and
the process table under /proc.

Only the standard library is used, so conftest.py can import this module directly.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = [
    "Fleet",
    "FleetCommandError",
    "FleetError",
    "fleet_fixture_factory",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_PORT_BASE = 22220
PORT_BASE_ENV = "DRIFTD_FLEET_PORT_BASE"
TMPDIR_ENV = "DRIFTD_FLEET_TMPDIR"
PYTHON_ENV = "DRIFTD_FLEET_PYTHON"
SSHD = "/usr/sbin/sshd"
MARKER = ".driftd-fleet"
RUN_DIR = "/run/driftd-fleet"  # inside each host: sshd_config and host key
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")
KEY_FILES = (
    "id_ed25519",
    "id_ed25519.pub",
    "ssh_host_ed25519_key",
    "ssh_host_ed25519_key.pub",
)
TOOLS = ("unshare", "chroot", "mount", "umount", "ssh", "ssh-keygen", "hostname")

SSHD_CONFIG = """\
# Written by tests/fleet.py; the port, ListenAddress and PidFile come as -p/-o.
HostKey {run_dir}/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel INFO
"""


class FleetError(RuntimeError):
    """A fleet could not be set up, started, stopped or torn down."""


class FleetCommandError(subprocess.CalledProcessError):
    """A command run inside a host exited non-zero; its text includes stderr."""

    def __str__(self) -> str:
        """Return the usual message followed by the command's stderr, if any."""
        text = super().__str__()
        if self.stderr:
            text += f"\nstderr:\n{str(self.stderr).rstrip()}"
        return text


@dataclass
class _Host:
    """One host's paths, port and running sshd (the unshare parent process)."""

    name: str
    port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def upper(self) -> Path:
        """The overlay upper directory: every change the host made."""
        return self.home / "upper"

    @property
    def work(self) -> Path:
        """The overlay work directory."""
        return self.home / "work"

    @property
    def root(self) -> Path:
        """The overlay mount point: the host's /."""
        return self.home / "root"

    @property
    def log(self) -> Path:
        """Where sshd's stderr goes."""
        return self.home / "sshd.log"


@dataclass(eq=False)
class Fleet:
    """N real SSH hosts on 127.0.0.1, each an overlay chroot of this machine's /.

    Host ``PREFIXnn`` (1-based, two digits) listens on ``port_base + nn``.  Nothing
    happens until :meth:`start` (or ``with Fleet(...) as fleet``); :meth:`teardown`
    undoes everything and is idempotent.
    """

    count: int = 3
    base_dir: Path | str | None = None
    port_base: int | None = None
    prefix: str = "fleet"
    start_timeout: float = 10.0
    _hosts: dict[str, _Host] = field(default_factory=dict, init=False, repr=False)
    _base: Path | None = field(default=None, init=False, repr=False)
    _created_base: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        """Validate the arguments and work out names and ports (nothing starts)."""
        if not 1 <= self.count <= 99:
            raise ValueError(f"a fleet has 1 to 99 hosts, not {self.count}")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", self.prefix):
            raise ValueError(f"host name prefix {self.prefix!r} is not a hostname")

        if self.port_base is None:
            self.port_base = default_port_base()
        if self.port_base < 1024 or self.port_base + self.count > 65535:
            raise ValueError(f"port base {self.port_base} is out of range")

    # -- public API -----------------------------------------------------------

    @staticmethod
    def available() -> tuple[bool, str]:
        """Say whether fleets can run here, and if not, why (for pytest.skip)."""
        return _available()

    @classmethod
    def reap_stale(cls, tmp_root: Path | str | None = None) -> list[Path]:
        """Tear down fleets left mounted by a process that has died.

        Looks only at overlay mounts whose base directory holds a fleet marker
        naming an owner process that no longer exists.  Returns the base
        directories cleaned up.
        """
        del cls
        return _reap_stale(None if tmp_root is None else Path(tmp_root))

    @property
    def names(self) -> list[str]:
        """Host names in order: ``fleet01``, ``fleet02``, ..."""
        return [f"{self.prefix}{i:02d}" for i in range(1, self.count + 1)]

    @property
    def base(self) -> Path:
        """The fleet's base directory (exists once started)."""
        if self._base is None:
            raise FleetError("the fleet has not been started")
        return self._base

    @property
    def key(self) -> Path:
        """The private key that logs in as root on every host."""
        return self.base / "id_ed25519"

    @property
    def public_key(self) -> str:
        """The public half of :attr:`key`, as in authorized_keys."""
        return (self.base / "id_ed25519.pub").read_text().strip()

    @functools.cached_property
    def python_interpreter(self) -> str:
        """A python3 that exists inside every host and runs Ansible modules."""
        return find_python()

    def port(self, name: str) -> int:
        """The TCP port on 127.0.0.1 where host NAME's sshd listens."""
        assert self.port_base is not None
        return self.port_base + self.names.index(self._check_name(name)) + 1

    def root(self, name: str) -> Path:
        """The host's / as seen from this machine; edit files under it freely.

        Mind absolute symlinks: followed from outside they lead to the real
        machine's files.  Use :meth:`run` for paths that may be symlinks.
        """
        return self._host(name).root

    def upper(self, name: str) -> Path:
        """The host's overlay upper directory: exactly what it changed."""
        return self._host(name).upper

    def start(self) -> Fleet:
        """Mount and start every host; return once each sshd accepts connections.

        Raises FleetError (after tearing down whatever was set up) when a host
        does not come up within ``start_timeout`` seconds.
        """
        if self._hosts:
            return self
        ok, reason = self.available()
        if not ok:
            raise FleetError(f"cannot start a fleet here: {reason}")

        _reap_stale(None)
        self._make_base()
        atexit.register(self._teardown_at_exit)

        try:
            self._make_keys()
            for name in self.names:
                self._hosts[name] = _Host(name, self.port(name), self.base / name)
            # Leaving the pool waits for every host, so teardown below never
            # races a host still being mounted.
            with ThreadPoolExecutor(max_workers=min(8, self.count)) as pool:
                list(pool.map(self._bring_up, self._hosts.values()))
        except BaseException:
            self.teardown()
            raise
        return self

    def stop_host(self, name: str) -> None:
        """Stop host NAME: kill every process whose root is its chroot.

        That is its sshd, every session sshd (e.g. Ansible's ControlPersist
        sessions) and anything :meth:`run` left behind.  Mounts stay, so files
        survive for :meth:`start_host`.
        """
        host = self._host(name)
        remaining = _kill_rooted([host.root])
        if remaining:
            raise FleetError(f"{name}: processes survived SIGKILL: {remaining}")
        self._reap_parent(host)

    def start_host(self, name: str) -> None:
        """Start host NAME's sshd again on the same port; return once it answers."""
        host = self._host(name)
        if host.proc is not None and host.proc.poll() is None:
            raise FleetError(f"{name} is already running")
        self._spawn_sshd(host)
        self._wait_for_sshd(host)

    def is_up(self, name: str) -> bool:
        """Whether host NAME's sshd is running and accepts TCP connections."""
        host = self._host(name)
        if host.proc is None or host.proc.poll() is not None:
            return False
        return _ssh_banner(host.port, timeout=1.0) is not None

    def run(
        self,
        name: str,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside host NAME (chroot + its hostname), capturing text output.

        The command gets a clean environment (PATH, HOME=/root, LANG) plus ENV,
        not the caller's: a venv on the caller's PATH would otherwise leak in.
        With check=True a non-zero exit raises FleetCommandError (with stderr).
        """
        if not argv:
            raise ValueError("run() needs a command")
        host = self._host(name)

        command = [
            "unshare", "--uts", "chroot", str(host.root),
            "/bin/sh", "-c", 'hostname "$1" && shift && exec "$@"',
            "fleet-run", host.name, *argv,
        ]  # fmt: skip
        full_env = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        full_env.update(env or {})
        done = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )

        if check and done.returncode != 0:
            raise FleetCommandError(
                done.returncode, list(argv), done.stdout, done.stderr
            )
        return done

    def ssh_command(self, name: str, *command: str) -> list[str]:
        """The ssh argv that logs in to host NAME as root and runs COMMAND."""
        return [
            "ssh", "-i", str(self.key), "-p", str(self.port(name)),
            *SSH_OPTIONS, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", f"root@{LOOPBACK}", *command,
        ]  # fmt: skip

    def write_inventory(
        self,
        path: Path | str,
        group_map: Mapping[str, Sequence[str]] | None = None,
    ) -> Path:
        """Write an INI inventory of every host (plus optional groups); return it.

        Each host line carries its port, the fleet key, ssh args that ignore
        host keys and a python3 that exists inside the hosts.  GROUP_MAP maps a
        group name to host names and becomes ``[group]`` sections.
        """
        groups: list[str] = []
        for group, members in (group_map or {}).items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", group):
                raise ValueError(f"{group!r} is not a valid Ansible group name")
            groups += ["", f"[{group}]", *(self._check_name(m) for m in members)]

        common = " ".join(SSH_OPTIONS)
        hosts = [
            f"{name} ansible_host={LOOPBACK} ansible_port={self.port(name)}"
            f" ansible_user=root ansible_ssh_private_key_file={self.key}"
            f" ansible_ssh_common_args='{common}'"
            f" ansible_python_interpreter={self.python_interpreter}"
            for name in self.names
        ]

        target = Path(path)
        target.write_text("\n".join(hosts + groups) + "\n")
        return target

    def teardown(self) -> None:
        """Kill every process rooted in a host, unmount everything, remove files.

        Idempotent and safe from atexit or a fixture finalizer.  Files are
        removed only once no mount is left under the base directory; if a
        mount survives even a lazy unmount, FleetError is raised and nothing
        is deleted.
        """
        with self._lock:
            if self._base is None:
                return
            _cleanup_base(self._base, created_base=self._created_base)
            for host in self._hosts.values():
                self._reap_parent(host)
            self._hosts.clear()
            self._base = None
            atexit.unregister(self._teardown_at_exit)

    def __enter__(self) -> Fleet:
        """Start the fleet (see :meth:`start`)."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear the fleet down (see :meth:`teardown`)."""
        self.teardown()

    # -- setting up -----------------------------------------------------------

    def _check_name(self, name: str) -> str:
        """Return NAME if it is one of this fleet's hosts, else raise KeyError."""
        if name not in self.names:
            raise KeyError(f"no host {name!r} in this fleet ({', '.join(self.names)})")
        return name

    def _host(self, name: str) -> _Host:
        """The started host NAME."""
        self._check_name(name)
        if name not in self._hosts:
            raise FleetError("the fleet has not been started")
        return self._hosts[name]

    def _make_base(self) -> None:
        """Create (or adopt) the base directory, check it, and mark it as ours."""
        if self.base_dir is None:
            parent = os.environ.get(TMPDIR_ENV) or None
            base = Path(tempfile.mkdtemp(prefix="driftd-fleet-", dir=parent))
            created = True
        else:
            base = Path(self.base_dir)
            created = not base.exists()
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            if any(base.iterdir()):
                raise FleetError(f"fleet base {base} is not empty")
        base = base.resolve()

        problem = _base_dir_problem(base)
        if problem:
            if created:
                shutil.rmtree(base)
            raise FleetError(problem)

        marker = {
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "created_base": created,
        }
        (base / MARKER).write_text(json.dumps(marker) + "\n")
        self._base, self._created_base = base, created

    def _make_keys(self) -> None:
        """Generate the fleet's client key pair and sshd host key (ed25519)."""
        for stem, comment in (
            ("id_ed25519", "driftd-fleet"),
            ("ssh_host_ed25519_key", "driftd-fleet-host"),
        ):
            _check_call(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                 "-f", str(self.base / stem)]
            )  # fmt: skip

    def _bring_up(self, host: _Host) -> None:
        """Mount, configure and start one host, then wait for its sshd."""
        self._mount(host)
        self._configure(host)
        self._spawn_sshd(host)
        self._wait_for_sshd(host)

    def _mount(self, host: _Host) -> None:
        """Mount the overlay of / at the host root, then /proc, /dev, /sys, tmpfs."""
        for path in (host.upper, host.work, host.root):
            path.mkdir(mode=0o755, parents=True)

        r = str(host.root)
        options = f"lowerdir=/,upperdir={host.upper},workdir={host.work}"
        _check_call(["mount", "-t", "overlay", "-o", options, "overlay", r])
        _check_call(["mount", "--make-private", r])

        _check_call(["mount", "--bind", "/proc", f"{r}/proc"])
        _check_call(["mount", "--rbind", "/dev", f"{r}/dev"])
        _check_call(["mount", "--bind", "/sys", f"{r}/sys"])
        _check_call(["mount", "-o", "remount,bind,ro", f"{r}/sys"])
        for where, mode, size in (("run", "755", "64m"), ("tmp", "1777", "256m")):
            options = f"mode={mode},size={size},nosuid,nodev"
            _check_call(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", f"{r}/{where}"]
            )

        # Binds of shared mounts join the source's peer group: make every mount
        # under the root a slave so unmounting it never propagates to the host.
        _check_call(["mount", "--make-rslave", r])

    def _configure(self, host: _Host) -> None:
        """Write the host's name files, resolver, sshd config, keys.

        /etc/hosts gains every fleet name (the same lines on each host) and
        /etc/resolv.conf points at 127.0.0.1 only, so nothing inside a host
        (e.g. Ansible's fqdn fact) asks the machine's real DNS server about
        names like ``fleet01``.
        """
        root = host.root
        _write_inside(root, "etc/hostname", host.name + "\n")
        fleet_names = "".join(
            f"127.0.1.{i}\t{name}\n" for i, name in enumerate(self.names, 1)
        )
        hosts = (
            (root / "etc/hosts").read_text() if (root / "etc/hosts").is_file() else ""
        )
        _write_inside(
            root, "etc/hosts", f"{hosts.rstrip()}\n# driftd test fleet\n{fleet_names}"
        )
        _write_inside(
            root,
            "etc/resolv.conf",
            "# driftd test fleet: DNS stays on loopback\n"
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )

        (root / "run/sshd").mkdir(mode=0o755)
        (root / "run/lock").mkdir(mode=0o1777)
        (root / "run/lock").chmod(0o1777)
        run_dir = root / RUN_DIR.lstrip("/")
        run_dir.mkdir(mode=0o700)
        (run_dir / "sshd_config").write_text(SSHD_CONFIG.format(run_dir=RUN_DIR))
        host_key = run_dir / "ssh_host_ed25519_key"
        shutil.copyfile(self.base / "ssh_host_ed25519_key", host_key)
        host_key.chmod(0o600)

        ssh_dir = root / "root/.ssh"
        if ssh_dir.is_symlink():
            ssh_dir.unlink()
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.chmod(0o700)
        _write_inside(root, "root/.ssh/authorized_keys", self.public_key + "\n", 0o600)

    def _spawn_sshd(self, host: _Host) -> None:
        """Start sshd -D for HOST in a new UTS namespace, chrooted to its root."""
        if not _port_is_free(host.port):
            raise FleetError(
                f"{host.name}: port {host.port} on {LOOPBACK} is already in use"
                f" (another fleet? set {PORT_BASE_ENV} to move the fleet)"
            )

        script = (
            'hostname "$1" && exec /usr/sbin/sshd -D -e'
            f" -f {RUN_DIR}/sshd_config"
            ' -p "$2" -o ListenAddress=127.0.0.1 -o PidFile=/run/sshd-"$2".pid'
        )
        command = [
            "unshare", "--uts", "--fork", "chroot", str(host.root),
            "/bin/sh", "-c", script, "fleet-sshd", host.name, str(host.port),
        ]  # fmt: skip
        with host.log.open("ab") as log_file:
            host.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
                start_new_session=True,
            )

    def _wait_for_sshd(self, host: _Host) -> None:
        """Wait until HOST's sshd sends its banner; raise FleetError with its log."""
        assert host.proc is not None
        deadline = time.monotonic() + self.start_timeout

        while time.monotonic() < deadline:
            if host.proc.poll() is not None:
                raise FleetError(
                    f"{host.name}: sshd exited with {host.proc.returncode}"
                    f" before listening on port {host.port}\n{_tail(host.log)}"
                )
            banner = _ssh_banner(host.port, timeout=0.5)
            if banner is not None:
                return
            time.sleep(0.02)

        raise FleetError(
            f"{host.name}: sshd did not accept connections on {LOOPBACK}:{host.port}"
            f" within {self.start_timeout:g} s\n{_tail(host.log)}"
        )

    def _reap_parent(self, host: _Host) -> None:
        """Wait for the host's unshare parent (it exits with sshd); kill if stuck."""
        if host.proc is None:
            return
        try:
            host.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.proc.wait(timeout=5)
        host.proc = None

    def _teardown_at_exit(self) -> None:
        """Tear down from atexit, logging instead of raising."""
        try:
            self.teardown()
        except Exception:
            log.exception("fleet teardown at exit failed")


# -- module helpers ---------------------------------------------------------------


def default_port_base() -> int:
    """The port base from $DRIFTD_FLEET_PORT_BASE, else 22220."""
    raw = os.environ.get(PORT_BASE_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT_BASE
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{PORT_BASE_ENV}={raw!r} is not a port number") from None


def find_python() -> str:
    """Return a python3 path that exists on this machine (so in every host).

    Prefers $DRIFTD_FLEET_PYTHON, then /usr/bin/python3, then the base (non-venv)
    interpreter running this code: Ansible modules need only the stdlib.
    """
    candidates = [
        os.environ.get(PYTHON_ENV, ""),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        str(Path(sys.base_prefix) / "bin" / "python3"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FleetError("no python3 found for Ansible modules inside the fleet hosts")


@functools.cache
def _available() -> tuple[bool, str]:
    """Check root, tools, sshd and a trial overlay mount of / (cached)."""
    if not sys.platform.startswith("linux"):
        return False, "fleet tests need Linux"
    if os.geteuid() != 0:
        return False, "fleet tests need root (mount, chroot, unshare)"
    if not os.access(SSHD, os.X_OK):
        return False, f"{SSHD} is missing (run tests/prepare-host as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)}"

    # overlay may be a module not loaded yet (absent from /proc/filesystems),
    # so a real mount decides.
    return _trial_overlay()


def _trial_overlay() -> tuple[bool, str]:
    """Mount and unmount one overlay of / in the fleet temp dir; report failure."""
    parent = os.environ.get(TMPDIR_ENV) or None
    try:
        trial = Path(tempfile.mkdtemp(prefix="driftd-fleet-probe-", dir=parent))
    except OSError as exc:
        return False, f"cannot create a fleet temp dir: {exc}"
    trial = trial.resolve()

    problem = _base_dir_problem(trial)
    if problem:
        shutil.rmtree(trial)
        return False, problem

    for sub in ("upper", "work", "root"):
        (trial / sub).mkdir()
    options = f"lowerdir=/,upperdir={trial}/upper,workdir={trial}/work"
    done = subprocess.run(
        ["mount", "-t", "overlay", "-o", options, "overlay", f"{trial}/root"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        _unmount_tree(trial / "root")
    if _mounts_under(trial):
        return False, f"trial overlay at {trial}/root could not be unmounted"
    shutil.rmtree(trial)

    if done.returncode != 0:
        return False, f"cannot mount an overlay of /: {done.stderr.strip()}"
    return True, "ok"


def _base_dir_problem(base: Path) -> str | None:
    """Why BASE cannot hold overlay upper dirs (None if it can)."""
    fstype, mountpoint = _filesystem_of(base)
    if fstype == "overlay":
        return (
            f"{base} is on an overlay filesystem ({mountpoint}); overlay upper"
            f" dirs cannot stack on it: set {TMPDIR_ENV} to a directory on"
            " ext4, xfs, btrfs or tmpfs"
        )
    if any((parent / MARKER).exists() for parent in base.parents):
        return f"{base} is inside another fleet's base directory"
    return None


def _cleanup_base(base: Path, *, created_base: bool) -> None:
    """Kill processes rooted under BASE, unmount everything there, remove files.

    Removes BASE itself if the fleet created it, else only the fleet's own files.
    """
    if not base.is_dir():
        return
    roots = sorted(p / "root" for p in base.iterdir() if (p / "root").is_dir())

    for _ in range(3):
        remaining = _kill_rooted(roots)
        for root in roots:
            _unmount_tree(root, lazy=False)
        if not _mounts_under(base) and not remaining:
            break
    else:
        for root in roots:
            _unmount_tree(root, lazy=True)

    left = _mounts_under(base)
    if left:
        raise FleetError(f"mounts left under {base}, not deleting: {left}")

    for root in roots:
        with contextlib.suppress(FileNotFoundError):
            root.rmdir()  # empty once unmounted; refuses otherwise, by design
    if created_base:
        shutil.rmtree(base)
        return
    for root in roots:
        shutil.rmtree(root.parent)
    for file_name in (*KEY_FILES, MARKER):
        (base / file_name).unlink(missing_ok=True)


def _reap_stale(tmp_root: Path | None) -> list[Path]:
    """Clean up fleet bases whose marker names a dead owner (see reap_stale)."""
    bases: set[Path] = set()
    for mountpoint, fstype in _mount_table():
        path = Path(mountpoint)
        if fstype == "overlay" and path.name == "root":
            base = path.parent.parent
            if (base / MARKER).is_file():
                bases.add(base)
    if tmp_root is not None:
        bases = {b for b in bases if b.is_relative_to(tmp_root)}

    reaped = []
    for base in sorted(bases):
        try:
            marker = json.loads((base / MARKER).read_text())
            owner, start = int(marker["pid"]), marker.get("start")
            created = bool(marker.get("created_base", False))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _process_start(owner) is not None and _process_start(owner) == start:
            continue
        log.warning("reaping fleet left behind by dead process %s: %s", owner, base)
        _cleanup_base(base, created_base=created)
        reaped.append(base)
    return reaped


def _kill_rooted(roots: Sequence[Path], grace: float = 1.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process whose root is under ROOTS.

    Loops until none remain (a few rounds at most); returns the pids left.
    """
    for round_no in range(4):
        pids = _pids_rooted_in(roots)
        if not pids:
            return []
        sig = signal.SIGTERM if round_no == 0 else signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pids_rooted_in(roots):
            time.sleep(0.02)
    return _pids_rooted_in(roots)


def _pids_rooted_in(roots: Iterable[Path]) -> list[int]:
    """Pids of live processes whose /proc/PID/root is one of ROOTS or below."""
    prefixes = [str(r) for r in roots]
    if not prefixes:
        return []
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            root = os.readlink(f"/proc/{entry.name}/root")
        except OSError:
            continue  # gone, a zombie, or a kernel thread we may not read
        if any(root == p or root.startswith(p + "/") for p in prefixes):
            found.append(int(entry.name))
    return found


def _unmount_tree(root: Path, *, lazy: bool = False) -> None:
    """``umount -R ROOT`` (with -l if LAZY) when anything is mounted there."""
    if not _mounts_under(root):
        return
    command = ["umount", "-R", *(["-l"] if lazy else []), str(root)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("%s failed: %s", " ".join(command), done.stderr.strip())


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, fs type) for every mount in this mount namespace."""
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        table.append((_unescape(fields[4]), fields[separator + 1]))
    return table


def _mounts_under(path: Path) -> list[str]:
    """Mount points at PATH or below it."""
    prefix = str(path)
    return [
        mp for mp, _ in _mount_table() if mp == prefix or mp.startswith(prefix + "/")
    ]


def _filesystem_of(path: Path) -> tuple[str, str]:
    """(fs type, mount point) of the mount that holds PATH."""
    best = ("", "")
    target = str(path)
    for mountpoint, fstype in _mount_table():
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best[1]):
            best = (fstype, mountpoint)
    return best


def _unescape(text: str) -> str:
    r"""Decode mountinfo's octal escapes (``\040`` for a space, ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _process_start(pid: int) -> str | None:
    """PID's start time in clock ticks since boot (None if it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _port_is_free(port: int) -> bool:
    """Whether PORT on 127.0.0.1 can be bound (as sshd will, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _ssh_banner(port: int, timeout: float) -> bytes | None:
    """The SSH banner from 127.0.0.1:PORT, or None if nothing answers like sshd."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            banner = sock.recv(64)
    except OSError:
        return None
    return banner if banner.startswith(b"SSH-") else None


def _write_inside(root: Path, relative: str, text: str, mode: int = 0o644) -> None:
    """Write TEXT to ROOT/RELATIVE without following a symlink out of ROOT.

    An absolute symlink in a host (say /etc/resolv.conf -> /run/...) resolves
    against the real machine when followed from outside, so a symlink at the
    target is replaced, and a parent that resolves outside ROOT is refused.
    """
    target = root / relative
    if not target.parent.resolve().is_relative_to(root):
        raise FleetError(f"{target.parent} leads out of {root}; not writing there")
    if target.is_symlink():
        target.unlink()
    target.write_text(text)
    target.chmod(mode)


def _check_call(command: list[str]) -> None:
    """Run COMMAND; raise FleetError with its stderr if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FleetError(
            f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}"
        )


def _tail(path: Path, lines: int = 20) -> str:
    """The last LINES lines of PATH, labelled, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"({path} unreadable)"
    return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text)


def fleet_fixture_factory(
    count: int = 3,
    *,
    scope: Literal["session", "package", "module", "class", "function"] = "session",
    name: str = "fleet",
    port_base: int | None = None,
) -> Callable[..., Any]:
    """Return a pytest fixture that yields a started Fleet and tears it down.

    Use in conftest.py as ``fleet = fleet_fixture_factory(3)``.  It skips (with
    the reason from Fleet.available()) where fleets cannot run.  pytest is
    imported lazily so this module stays stdlib-only.
    """
    import pytest

    def _fixture() -> Iterator[Fleet]:
        ok, reason = Fleet.available()
        if not ok:
            pytest.skip(f"SSH fleet unavailable: {reason}")
        with Fleet(count, port_base=port_base) as fleet:
            yield fleet

    _fixture.__doc__ = f"A started {count}-host SSH fleet on 127.0.0.1."
    return pytest.fixture(scope=scope, name=name)(_fixture)
