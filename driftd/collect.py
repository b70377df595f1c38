"""Collection: run driftd's read-only play through ansible-runner, one result per host.

Facts are taken from the job's events (ansible-core 2.19 leaves the runner's
fact cache empty). Every run gets a fresh private directory that is removed
afterwards, so no stale settings and no artifacts (which hold the whole
environment) are left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import structlog

from driftd.errors import UserError
from driftd.snapshot import (
    Snapshot,
    normalise_facts,
    normalise_packages,
    normalise_services,
    normalise_value,
    unwrap_probe,
)

log = structlog.get_logger("driftd.collect")

MAX_EVENT_RES = 64_000_000
LOCALHOST_INVENTORY = (
    "localhost ansible_connection=local ansible_python_interpreter={}\n"
)


class CollectError(UserError, RuntimeError):
    """Collection could not start (bad inventory, no ansible-playbook, ...)."""


@dataclass
class HostOutcome:
    """How one host ended a collection: ``ok``, ``partial``, ``unreachable`` or
    ``failed``; ``message`` keeps Ansible's own words for the last three."""

    host: str
    status: str
    snapshot: Snapshot | None = None
    message: str | None = None
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """A host to collect from and its inventory groups, in Ansible's order."""

    name: str
    groups: tuple[str, ...]


def playbooks_dir() -> FsPath:
    """Where collect.yml lives: beside the package in a checkout, else the data dir."""
    candidates = [
        FsPath(__file__).resolve().parent.parent / "playbooks",
        FsPath(sys.prefix) / "share" / "driftd" / "playbooks",
    ]
    for candidate in candidates:
        if (candidate / "collect.yml").is_file():
            return candidate

    raise CollectError("cannot find playbooks/collect.yml (is driftd installed whole?)")


def localhost_inventory(directory: FsPath) -> FsPath:
    """Write the default inventory: this machine, over the local connection."""
    path = directory / "localhost.ini"
    path.write_text(LOCALHOST_INVENTORY.format(sys.executable))

    return path


def _ansible_complaints(text: str) -> list[str]:
    """What Ansible printed while reading an inventory, one line per problem."""
    lines = (line.strip() for line in text.splitlines())
    kept = [
        line.removeprefix("[WARNING]:").removeprefix("[ERROR]:").strip()
        for line in lines
        if line and not line.startswith(("<<<", "Origin:"))
    ]
    generic = ("Unable to parse", "No inventory was parsed")
    kept = [line for line in kept if not line.startswith(generic)]

    return list(dict.fromkeys(kept))


@contextlib.contextmanager
def _ansible_output() -> Iterator[io.StringIO]:
    """What Ansible prints meanwhile, kept: its warnings are ours to give."""
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        yield said


def _quiet(manager: Any, pattern: str, where: str) -> list[Any]:
    """Hosts matching ``pattern``; a pattern Ansible cannot read (``~(``,
    ``web[9]``) is the user's to fix."""
    try:
        with _ansible_output():
            return list(manager.get_hosts(pattern))
    except Exception as error:  # noqa: BLE001 (Ansible raises many kinds for a bad pattern)
        raise CollectError(f"{where}: {pattern!r}: {error}") from None


def resolve_targets(
    inventory: str, limit: str | None, label: str = "--limit"
) -> list[Target]:
    """The hosts an inventory source and ``--limit`` pattern select.

    Uses Ansible's own inventory code, so every source ``ansible -i`` takes
    works. Raises CollectError for an empty inventory or a pattern that
    matches nothing.
    """
    from ansible.inventory.helpers import sort_groups
    from ansible.inventory.manager import InventoryManager, split_host_pattern
    from ansible.parsing.dataloader import DataLoader

    if "," not in inventory and not os.path.exists(inventory):
        raise CollectError(f"{inventory}: inventory source does not exist")

    with _ansible_output() as said:
        manager = InventoryManager(loader=DataLoader(), sources=[inventory])
    complaints = _ansible_complaints(said.getvalue())
    if not manager._inventory.processed_sources:  # no public view of this
        empty = os.path.isdir(inventory) and not os.listdir(inventory)
        why = "an empty directory" if empty else "no inventory plugin accepted it"
        why = complaints[0] if complaints else why
        raise CollectError(f"{inventory}: Ansible cannot parse this inventory: {why}")
    for complaint in complaints:
        log.warning("inventory_warning", inventory=inventory, said=complaint)

    hosts = manager.get_hosts("all")
    if not hosts:
        raise CollectError(f"{inventory}: the inventory has no hosts")

    if limit:
        for raw_term in split_host_pattern(limit):
            term = raw_term.strip().lstrip("&")
            if not term:
                raise CollectError(f"{label} {limit}: an empty pattern")
            if not term.startswith("!") and not _quiet(
                manager, term, f"{label} {limit}"
            ):
                raise CollectError(
                    f"{label} {limit}: {term!r} matches no host in {inventory}"
                )
        hosts = _quiet(manager, limit, f"{label} {limit}")
        if not hosts:
            raise CollectError(f"{label} {limit}: matches no host in {inventory}")

    targets = []
    for host in hosts:
        try:
            host.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CollectError(
                f"{inventory}: host {host.name!r} is not valid UTF-8"
            ) from None
        groups = [g.name for g in sort_groups(host.get_groups())]
        targets.append(
            Target(host.name, tuple(g for g in groups if g not in ("all", "ungrouped")))
        )

    return targets


@dataclass
class _Events:
    """What the event handler queued: kept cheap, read after the run."""

    ok: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        host = data.get("host")
        task = str(data.get("task") or "")
        if host and task.startswith("driftd:"):
            section = task.removeprefix("driftd:")
            result = data.get("res") or {}
            with self.lock:
                if kind == "runner_on_ok":
                    self.ok.setdefault(host, {})[section] = result
                elif kind == "runner_on_failed":
                    self.failed.setdefault(host, {})[section] = _message(result)
                elif kind == "runner_on_unreachable":
                    self.unreachable[host] = _message(result)

        return False  # keep events off the disk


def _message(result: Mapping[str, Any]) -> str:
    """Ansible's account of a failure, with the module's own stderr when the
    message alone only says the output was not JSON."""
    said = [result.get("msg"), result.get("stderr"), result.get("module_stderr")]
    parts = [str(p).strip() for p in said if p and str(p).strip()]
    text = " | ".join(dict.fromkeys(parts))

    return (text or "no message from Ansible")[:2000]


def _gathered(section: str, results: Mapping[str, Any], snapshot: Snapshot) -> bool:
    """Put one section's result into the snapshot; False if Ansible gave none.

    An empty result counts as none: a host with no packages and no services
    is far likelier to be a module that returned nothing than a real state.
    """
    if section == "facts":
        facts = (results.get("facts") or {}).get("ansible_facts")
        if not facts:
            return False
        snapshot.data["facts"], unknown = normalise_facts(facts)
        snapshot.unknown |= unknown
        return True

    if section in ("services", "packages") and section in results:
        raw = (results[section].get("ansible_facts") or {}).get(section)
        if not raw:
            return False
        snapshot.data[section] = (
            normalise_services(raw, snapshot.unknown)
            if section == "services"
            else normalise_packages(raw)
        )
        return True

    probed = (results.get("probe") or {}).get("driftd") or {}
    if section not in probed or not (probed[section] or section in ("files", "ports")):
        return False
    snapshot.data[section] = _probe_section(
        section, unwrap_probe(probed[section]), snapshot
    )

    return True


def _outcome(host: str, sections: Sequence[str], events: _Events) -> HostOutcome:
    if host in events.unreachable:
        return HostOutcome(host, "unreachable", message=events.unreachable[host])

    results = events.ok.get(host, {})
    failures = dict(events.failed.get(host, {}))
    probe_errors = (results.get("probe") or {}).get("driftd_errors") or {}
    for section, error in probe_errors.items():
        if error != "unsupported":
            failures.setdefault(section, error)

    snapshot = Snapshot()
    missing = [s for s in sections if not _gathered(s, results, snapshot)]
    message = "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())) or None
    if not snapshot.data:
        return HostOutcome(host, "failed", message=message or "nothing was collected")
    if missing:
        note = f"not collected: {', '.join(missing)}"
        text = f"{note}; {message}" if message else note
        return HostOutcome(host, "partial", snapshot, text, missing)

    return HostOutcome(host, "ok", snapshot, message)


def _probe_section(section: str, raw: Any, snapshot: Snapshot) -> Any:
    if section == "packages":
        return {name: sorted(versions) for name, versions in raw.items()}
    if section == "files":
        stats = {}
        for path, entry in raw.items():
            if entry.get("exists") and "error" in entry:
                snapshot.unknown.add(("files", path))
                continue
            stats[path] = entry
            if entry.get("type") == "file" and not entry.get("checksum"):
                entry.pop("checksum", None)
                snapshot.unknown.add(("files", path, "checksum"))
        return normalise_value(stats, ("files",), snapshot.unknown)

    return normalise_value(raw, (section,), snapshot.unknown)


RUN_PREFIX = "driftd-run-"
INVENTORY_PREFIX = "driftd-inv-"


STALE_AFTER = 6 * 3600  # seconds: a run dir this old belongs to no live scan


def _stale(path: FsPath) -> bool:
    """Ours (same user) and older than any scan could run: a pid alone could be
    another PID namespace's that shares this temp dir."""
    try:
        info = path.lstat()
    except OSError:
        return False

    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and time.time() - info.st_mtime > STALE_AFTER
    )


def sweep_temp_dirs() -> list[FsPath]:
    """Remove run and inventory dirs left in the temp dir by a driftd that was
    killed (their names carry its pid); they may hold inventory variables."""
    from driftd.store import pid_alive

    swept = []
    for prefix in (RUN_PREFIX, INVENTORY_PREFIX):
        for path in FsPath(tempfile.gettempdir()).glob(f"{prefix}*-*"):
            pid = path.name.removeprefix(prefix).split("-", 1)[0]
            if pid.isdigit() and _stale(path) and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                swept.append(path)
    if swept:
        log.info("temp_dirs_swept", count=len(swept))

    return swept


def _ansible_said(runner: Any, lines: int = 6) -> str | None:
    """The end of what ansible-playbook printed, when no host was ever heard of
    (a broken inventory, a playbook error): the only account of what went wrong."""
    try:
        text = runner.stdout.read()
    except (OSError, AttributeError, ValueError):
        return None
    said = [line.strip() for line in str(text).splitlines() if line.strip()]

    return " | ".join(said[-lines:])[-2000:] or None


def collect(
    inventory: str,
    targets: Sequence[Target],
    *,
    sections: Sequence[str],
    files: Iterable[str] = (),
    forks: int = 8,
    timeout: int = 900,
    task_timeout: int = 120,
    gather_timeout: int = 30,
    become: bool = False,
    host_key_checking: bool = True,
    cancelled: Callable[[], bool] = lambda: False,
) -> dict[str, HostOutcome]:
    """Run the collection play over ``targets``; one outcome per target host."""
    import ansible_runner

    bin_dir = FsPath(sys.executable).parent
    search_path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    playbook = shutil.which("ansible-playbook", path=search_path)
    if playbook is None:
        raise CollectError("ansible-playbook is not on PATH (install ansible-core)")

    events = _Events()
    sweep_temp_dirs()
    private = FsPath(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
    started = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(playbooks_dir() / "collect.yml"),
            inventory=inventory,
            limit=",".join(t.name for t in targets),
            forks=max(1, min(forks, len(targets))),
            extravars={
                "driftd_sections": list(sections),
                "driftd_files": sorted(set(files)),
                "driftd_gather_timeout": gather_timeout,
                "driftd_task_timeout": task_timeout,
                "driftd_become": become,
            },
            envvars={
                "PATH": search_path,
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_HOST_KEY_CHECKING": str(host_key_checking),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "True",
                "ANSIBLE_LOCALHOST_WARNING": "False",
                "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
                "ANSIBLE_DEPRECATION_WARNINGS": "False",
                "MAX_EVENT_RES": str(MAX_EVENT_RES),
            },
            event_handler=events.handle,
            cancel_callback=cancelled,
            # How often runner looks at cancel_callback: a stop takes this long.
            settings={"pexpect_timeout": 1},
            timeout=timeout,
            quiet=True,
            suppress_env_files=True,
        )
        status, rc = runner.status, runner.rc
        heard = events.ok or events.failed or events.unreachable
        why = None if heard or status == "canceled" else _ansible_said(runner)
    finally:
        shutil.rmtree(private, ignore_errors=True)

    log.info(
        "collection_finished",
        hosts=len(targets),
        runner_status=status,
        rc=rc,
        seconds=round(time.monotonic() - started, 2),
    )

    outcomes = {t.name: _outcome(t.name, sections, events) for t in targets}
    if why:
        for outcome in outcomes.values():
            outcome.message = f"ansible-playbook {status} (rc {rc}): {why}"
    if status in ("timeout", "canceled"):
        for outcome in outcomes.values():
            if outcome.status == "ok":
                continue
            if (
                outcome.status == "failed"
                and outcome.message == "nothing was collected"
            ):
                outcome.message = f"collection {status} before this host answered"

    return outcomes
