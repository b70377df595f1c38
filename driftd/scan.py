"""The engine's entry points: scan hosts, capture baselines, accept drift.

Everything here is a library call that knows no command line: the CLI and
the daemon are thin shells over it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import structlog

from driftd.baseline import (
    BaselineError,
    BaselineSet,
    Expected,
    Layer,
    dump_layer,
    git_commit,
    group_file_name,
    host_file_name,
    is_layer_file,
    load_document,
    merge_layers,
    parse_layer,
    write_atomic,
)
from driftd.collect import (
    INVENTORY_PREFIX,
    CollectError,
    HostOutcome,
    Target,
    collect,
    localhost_inventory,
    resolve_targets,
)
from driftd.compare import Comparison, DriftItem, compare, prune
from driftd.config import Settings
from driftd.errors import UserError
from driftd.paths import GlobSet, Path, compile_glob, format_path, lookup, parse_path
from driftd.snapshot import Snapshot, load_dump_text
from driftd.store import HostRecord, Store

log = structlog.get_logger("driftd.scan")

EXIT_CLEAN = 0
EXIT_ERROR = 1
EXIT_DRIFT = 2
EXIT_UNCHECKED = 3
LOCK_POLL = 0.2  # seconds between tries for the scan lock


class DriftdError(UserError, RuntimeError):
    """A failure to report to the user as it is, without a traceback."""


@dataclass
class HostReport:
    """One host's result in a scan, as shown to people and programs."""

    host: str
    status: str
    items: list[DriftItem] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    message: str | None = None
    baselines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "message": self.message,
            "baselines": self.baselines,
            "opened": self.opened,
            "resolved": self.closed,
            "items": [i.to_dict() for i in self.items],
        }


@dataclass
class ScanReport:
    scan_id: int
    status: str
    hosts: list[HostReport]

    @property
    def exit_code(self) -> int:
        """0 no drift, 2 drift found, 3 no drift but some hosts not checked;
        1 for a scan that was interrupted, whatever it found before."""
        if self.status == "interrupted":
            return EXIT_ERROR
        if any(h.items for h in self.hosts):
            return EXIT_DRIFT
        if any(h.status != "ok" for h in self.hosts):
            return EXIT_UNCHECKED

        return EXIT_CLEAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "hosts": [h.to_dict() for h in self.hosts],
        }


# --- shared steps -------------------------------------------------------------------


def load_baselines(settings: Settings) -> BaselineSet:
    try:
        return BaselineSet.load(settings.baselines)
    except BaselineError as error:
        raise DriftdError(str(error)) from error


@contextlib.contextmanager
def inventory_source(settings: Settings) -> Iterator[str]:
    """The inventory to use; the default (localhost) is written for the run."""
    if settings.inventory:
        yield settings.inventory
        return

    prefix = f"{INVENTORY_PREFIX}{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield str(localhost_inventory(FsPath(directory)))


def targets_for(
    inventory: str, limit: str | None, label: str = "--limit"
) -> list[Target]:
    try:
        return resolve_targets(inventory, limit, label)
    except CollectError as error:
        raise DriftdError(str(error)) from error


def files_to_stat(settings: Settings, baselines: BaselineSet) -> list[str]:
    """The configured files plus every file a baseline speaks of."""
    paths = set(settings.files)
    for layer in baselines.layers.values():
        paths.update(str(p[1]) for p in layer.pins if p[0] == "files" and len(p) > 1)
        paths.update(layer.snapshot.get("files", {}))

    return sorted(paths)


def run_collect(
    settings: Settings,
    inventory: str,
    targets: Sequence[Target],
    files: Sequence[str],
    cancelled: Callable[[], bool],
) -> dict[str, HostOutcome]:
    try:
        return collect(
            inventory,
            targets,
            sections=settings.sections,
            files=files,
            forks=settings.forks,
            timeout=settings.timeout,
            task_timeout=settings.task_timeout,
            gather_timeout=settings.gather_timeout,
            become=settings.become,
            host_key_checking=settings.host_key_checking,
            cancelled=cancelled,
        )
    except CollectError as error:
        raise DriftdError(str(error)) from error


def open_store(settings: Settings, *, sweep: bool = True, create: bool = True) -> Store:
    from driftd.store import StoreError

    try:
        return Store.open(settings.db, sweep=sweep, create=create)
    except StoreError as error:
        raise DriftdError(str(error)) from error


@contextlib.contextmanager
def scan_lock(
    settings: Settings, cancelled: Callable[[], bool] = lambda: False
) -> Iterator[None]:
    """One writer of drift at a time (scans, accepts); the next one waits,
    unless it is cancelled while it waits."""
    path = settings.db.with_name(settings.db.name + ".scan.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancelled():
                    raise DriftdError(
                        "cancelled while waiting for another scan or accept to finish"
                    ) from None
                if not waiting:
                    log.info("waiting_for_scan_lock", lock=str(path))
                    waiting = True
                time.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version_ids(
    store: Store, baselines: BaselineSet, layers: Sequence[Any]
) -> list[int]:
    return [
        store.baseline_version(
            layer.name, layer.content_hash, layer.text, git_commit=baselines.commit
        )
        for layer in layers
    ]


# --- scanning -----------------------------------------------------------------------


def evaluate(
    outcome: HostOutcome, expected: Expected | None, *, explain: bool = False
) -> tuple[str, Comparison | None, str | None]:
    """The status, comparison and message of one collected host.

    A host whose baseline expects values that were not observed (a section
    or fact not gathered, a placeholder) is ``partial``, whatever Ansible said.
    """
    if outcome.snapshot is None or outcome.status not in ("ok", "partial"):
        return outcome.status, None, outcome.message
    if expected is None:
        return "no_baseline", None, outcome.message

    comparison = compare(expected, outcome.snapshot, explain=explain)
    if not comparison.unobserved:
        return outcome.status, comparison, outcome.message

    shown = ", ".join(comparison.unobserved[:5])
    more = len(comparison.unobserved) - 5
    note = f"not observed: {shown}" + (f" and {more} more" if more > 0 else "")
    message = f"{outcome.message}; {note}" if outcome.message else note

    return "partial", comparison, message


def run_scan(
    settings: Settings,
    *,
    limit: str | None = None,
    trigger: str = "cli",
    cancelled: Callable[[], bool] = lambda: False,
    baselines: Callable[[], BaselineSet] | None = None,
) -> ScanReport:
    """Collect, compare and record one scan; each host is kept as it is judged.

    Baselines come from ``baselines`` (the daemon keeps them loaded) or are
    read from disk, in either case once this scan holds the scan lock, so an
    accept that finished while it waited is in force. Cancelling
    (``cancelled`` turning true) stops Ansible, keeps the hosts already
    answered and marks the scan ``interrupted``.
    """
    if baselines is None:
        loaded = load_baselines(settings)  # broken files stop us before the db
        baselines = functools.partial(_fresh, loaded)
    with inventory_source(settings) as inventory:
        targets = targets_for(inventory, limit)  # a bad inventory: no db either
        store = open_store(settings)
        try:
            with scan_lock(settings, cancelled):
                job = _Job(settings, store, baselines(), cancelled)
                return job.run(inventory, targets, limit or "all", trigger)
        finally:
            store.close()


def baseline_warnings(settings: Settings, baselines: BaselineSet) -> list[str]:
    """What in the baselines directory does nothing: YAML files outside the
    layer places, and layers for hosts or groups the inventory does not have
    (a typo there silently checks nothing)."""
    root = settings.baselines
    warnings = []
    known = {layer.name for layer in baselines.layers.values()}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if hidden or not is_layer_file(path) or relative in known:
            continue
        warnings.append(
            f"{path}: not a layer (layers are all.yml, groups/GROUP.yml and "
            "hosts/HOST.yml), so it is not applied"
        )

    try:
        with inventory_source(settings) as inventory:
            targets = targets_for(inventory, None)
    except DriftdError as error:
        return [*warnings, f"cannot read the inventory to check layer names: {error}"]
    hosts = {host_file_name(t.name) for t in targets}
    groups = {group_file_name(g) for t in targets for g in t.groups}
    for key, layer in sorted(baselines.layers.items()):
        if key.startswith("hosts/") and key not in hosts:
            warnings.append(f"{root / layer.name}: no such host in the inventory")
        if key.startswith("groups/") and key not in groups:
            warnings.append(f"{root / layer.name}: no such group in the inventory")

    return warnings


def _unknown_beyond(snapshot: Snapshot, files: set[str]) -> Callable[[Path], bool]:
    """What the snapshot did not observe, counting files that were not asked
    for: one dropped from the config is no longer watched, not resolved."""

    def unknown(path: Path) -> bool:
        if path[:1] == ("files",) and len(path) > 1 and path[1] not in files:
            return True
        return snapshot.is_unknown(path)

    return unknown


def _fresh(baselines: BaselineSet) -> BaselineSet:
    try:
        return baselines.fresh()
    except BaselineError as error:
        raise DriftdError(str(error)) from error


@dataclass
class _Job:
    settings: Settings
    store: Store
    baselines: BaselineSet
    cancelled: Callable[[], bool]

    def run(
        self, inventory: str, targets: Sequence[Target], target: str, trigger: str
    ) -> ScanReport:
        scan_id = self.store.begin_scan(trigger, target)
        with structlog.contextvars.bound_contextvars(scan_id=scan_id):
            log.info("scan_started", hosts=len(targets), trigger=trigger)
            try:
                reports = self.collect_and_judge(scan_id, inventory, targets)
            except BaseException:
                # Hosts already judged stay recorded; the scan says it stopped.
                with contextlib.suppress(Exception):
                    self.store.finish_scan(scan_id, "interrupted")
                raise

            status = "interrupted" if self.cancelled() else "complete"
            self.store.finish_scan(scan_id, status)
            drifted = sum(1 for r in reports if r.items)
            log.info("scan_finished", status=status, drifted=drifted)

        return ScanReport(scan_id, status, reports)

    def collect_and_judge(
        self, scan_id: int, inventory: str, targets: Sequence[Target]
    ) -> list[HostReport]:
        files = files_to_stat(self.settings, self.baselines)
        outcomes = run_collect(self.settings, inventory, targets, files, self.cancelled)
        reports = []
        for host in targets:
            outcome = outcomes[host.name]
            if self.cancelled() and outcome.snapshot is None:
                continue  # cut off before it answered: nothing to record
            with structlog.contextvars.bound_contextvars(host=host.name):
                reports.append(self.judge(scan_id, host, outcome, set(files)))

        return reports

    def judge(
        self, scan_id: int, host: Target, outcome: HostOutcome, files: set[str]
    ) -> HostReport:
        """Compare one host with its baseline and record it, in one transaction."""
        ignore = self.settings.ignore_rules
        expected = self.baselines.expected(host.name, host.groups, ignore)
        status, comparison, message = evaluate(outcome, expected, explain=True)
        items = comparison.items if comparison else []
        layers = expected.layers if expected else []
        rules = expected.ignore if expected else ignore
        snapshot = pruned(outcome.snapshot, rules) if outcome.snapshot else None
        ignoring = GlobSet.of(rules)
        record = HostRecord(
            host=host.name,
            status=status,
            items=items,
            snapshot_json=snapshot.to_json() if snapshot else None,
            snapshot_hash=snapshot.content_hash() if snapshot else None,
            baseline_ids=_version_ids(self.store, self.baselines, layers),
            message=message,
            is_unknown=_unknown_beyond(snapshot, files) if snapshot else None,
            hidden=comparison.hidden if comparison else None,
            is_ignored=lambda path: ignoring.first_match(path) is not None,
        )
        change = self.store.record_host(scan_id, record)
        log.info(
            "host_checked",
            status=status,
            items=len(items),
            opened=change.opened,
            resolved=change.closed,
        )

        return HostReport(
            host.name,
            status,
            items,
            change.opened,
            change.closed,
            message,
            [layer.name for layer in layers],
        )


# --- comparing files and stored scans -----------------------------------------------


def _read_side(path: FsPath) -> Snapshot | Layer:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise DriftdError(f"{path}: cannot read: {error.strerror}") from error
    if path.suffix in (".yml", ".yaml"):
        try:
            return parse_layer(str(path), text)
        except BaselineError as error:
            raise DriftdError(str(error)) from error

    return load_dump_text(text, str(path))


def diff_files(
    settings: Settings,
    expected_path: FsPath,
    actual_path: FsPath,
    *,
    explain: bool = False,
) -> Comparison:
    """Compare two files (fact dumps or baseline layers) under the ignore rules."""
    expected_side = _read_side(expected_path)
    actual_side = _read_side(actual_path)
    if isinstance(expected_side, Layer):
        expected = merge_layers([expected_side], settings.ignore_rules)
    else:
        expected = Expected(
            expected_side.data,
            [],
            settings.ignore_rules,
            [],
            set(expected_side.unknown),
        )
    actual = (
        Snapshot(dict(actual_side.snapshot))
        if isinstance(actual_side, Layer)
        else actual_side
    )

    return compare(expected, actual, explain=explain)


# --- baselines from snapshots -------------------------------------------------------


def _who() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def pruned(snapshot: Snapshot, rules: Sequence[str]) -> Snapshot:
    """The snapshot without what the ignore rules cover: what is worth keeping."""
    globs = GlobSet.of(rules)
    result = Snapshot(unknown=set(snapshot.unknown))
    for section, tree in snapshot.data.items():
        result.data[section], _ = prune(tree, globs, (section,))

    return result


def _layer_text(path: FsPath, document: dict[str, Any], name: str) -> str:
    """The text of a layer, checked as it would be read back."""
    text = dump_layer(document)
    try:
        parse_layer(name, text)
    except BaselineError as error:
        raise DriftdError(f"refusing to write {path}: {error}") from error

    return text


def _write_layer(path: FsPath, document: dict[str, Any], name: str) -> str:
    """Check a layer as it would be read back, then replace the file atomically."""
    text = _layer_text(path, document, name)
    write_atomic(path, text)

    return text


def _restore(path: FsPath, before: bytes | None) -> None:
    if before is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, before.decode("utf-8", "surrogateescape"))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP wait (in the main thread) until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def capture(
    settings: Settings,
    hosts: Sequence[str],
    *,
    from_history: bool = False,
) -> list[tuple[str, str, str]]:
    """Write each host's current snapshot as its baseline layer.

    Returns (host, file, outcome) triples. The snapshot is collected now
    unless ``from_history`` asks for the newest one kept in the database.
    Volatile values (the ignore rules in force) are left out of the file;
    the layer's own description, ignore rules and pins are kept.
    """
    baselines = load_baselines(settings)
    store = open_store(settings)
    results = []
    try:
        with inventory_source(settings) as inventory, scan_lock(settings):
            targets = targets_for(inventory, ",".join(hosts), "hosts")
            if from_history:
                snapshots = {t.name: _stored_snapshot(store, t.name) for t in targets}
            else:
                outcomes = run_collect(
                    settings,
                    inventory,
                    targets,
                    files_to_stat(settings, baselines),
                    lambda: False,
                )
                snapshots = {name: o.snapshot for name, o in outcomes.items()}
                for name, outcome in outcomes.items():
                    if outcome.status not in ("ok", "partial"):
                        results.append(
                            (name, "", f"{outcome.status}: {outcome.message}")
                        )
            for target in targets:
                snapshot = snapshots.get(target.name)
                if snapshot is None:
                    if from_history:
                        results.append((target.name, "", "no snapshot in history"))
                    continue
                name = baselines.file_of(host_file_name(target.name))
                path = settings.baselines / name
                document = load_document(path)
                expected = baselines.expected(
                    target.name, target.groups, settings.ignore_rules
                )
                rules = expected.ignore if expected else settings.ignore_rules
                document["snapshot"] = pruned(snapshot, rules).data
                document.setdefault("description", f"captured from {target.name}")
                _pin_what_shared_layers_add(document, expected, name, snapshot, rules)
                text = _write_layer(path, document, name)
                layer = parse_layer(name, text)
                store.baseline_version(
                    name,
                    layer.content_hash,
                    text,
                    git_commit=git_commit(settings.baselines),
                    author=_who(),
                    reason="captured",
                )
                # What drifted is the baseline now: accepted, not resolved.
                open_ids = [e["id"] for e in store.open_episodes(target.name)]
                store.close_episodes(open_ids, "accepted", _who(), "baseline captured")
                log.info("baseline_captured", host=target.name, file=str(path))
                results.append((target.name, str(path), "captured"))
    finally:
        store.close()

    return results


def _pin_what_shared_layers_add(
    document: dict[str, Any],
    expected: Expected | None,
    name: str,
    snapshot: Snapshot,
    rules: Sequence[str],
) -> None:
    """A captured host lacks values that shared layers' snapshots expect: pin
    them absent in its layer, so the capture holds as it was taken."""
    if expected is None:
        return
    shared = merge_layers([x for x in expected.layers if x.name != name], []).tree
    globs = GlobSet.of(rules)
    expect = document.get("expect") or {}
    for path in _missing(shared, document["snapshot"]):
        if globs.first_match(path) is None and not snapshot.is_unknown(path):
            expect.setdefault(format_path(path), {"absent": True})
    if expect:
        document["expect"] = expect


def _missing(shared: Any, own: Any, here: Path = ()) -> Iterator[Path]:
    """Paths ``shared`` holds below the sections ``own`` has, that ``own`` lacks."""
    for key, value in shared.items():
        if not here and key not in own:
            continue  # a section not collected says nothing
        if key not in own:
            yield (*here, key)
        elif isinstance(value, dict) and isinstance(own[key], dict):
            yield from _missing(value, own[key], (*here, key))


def _stored_snapshot(store: Store, host: str) -> Snapshot | None:
    text = store.last_snapshot(host)

    return Snapshot.from_json(text) if text else None


def _set_at(tree: dict[Any, Any], path: Path, value: Any, *, remove: bool) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            if remove:
                return
            child = node[key] = {}
        node = child
    if remove:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def accept(
    settings: Settings,
    host: str,
    *,
    reason: str,
    path_glob: str | None = None,
    who: str | None = None,
) -> list[dict[str, Any]]:
    """Make a host's open drift its new baseline and close it as ``accepted``.

    Values the host's own captured snapshot holds are edited in it; values
    that come from a pin or from a shared layer are overridden by a pin in
    the host's layer. The file is replaced atomically and recorded as a new
    baseline version with who accepted and why.
    """
    if not reason.strip():
        raise DriftdError("accept needs a --reason")
    if path_glob:
        compile_glob(path_glob)

    with scan_lock(settings):
        return _accept(settings, host, reason, path_glob, who)


def _accept(
    settings: Settings,
    host: str,
    reason: str,
    path_glob: str | None,
    who: str | None,
) -> list[dict[str, Any]]:
    baselines = load_baselines(settings)
    store = open_store(settings)
    try:
        episodes = store.open_episodes(host, path_glob)
        if not episodes:
            where = f" at {path_glob}" if path_glob else ""
            raise DriftdError(f"{host}: no open drift{where} to accept")

        name = baselines.file_of(host_file_name(host))
        path = settings.baselines / name
        document = load_document(path)
        snapshot = document.get("snapshot") or {}
        expect = document.get("expect") or {}
        groups = _groups_of(settings, host)
        expected = baselines.expected(host, groups, settings.ignore_rules)
        pinned = {p.path for p in expected.pins if p.hides} if expected else set()

        layers = expected.layers if expected else []
        shared = merge_layers([x for x in layers if x.name != name], []).tree
        for episode in episodes:
            item_path = parse_path(episode["path"])
            removed = episode["kind"] == "removed"
            under_pin = any(item_path[: len(p)] == p for p in pinned)
            # A removal edits this host's snapshot where the value is its own,
            # and needs an absent pin where a shared layer still supplies it.
            own = (
                lookup(snapshot, item_path)[0] if removed else item_path[0] in snapshot
            )
            if own and not under_pin:
                _set_at(snapshot, item_path, episode["actual"], remove=removed)
            if not own or under_pin or (removed and lookup(shared, item_path)[0]):
                expect[format_path(item_path)] = (
                    {"absent": True} if removed else _pin_value(episode["actual"])
                )
        if snapshot:
            document["snapshot"] = snapshot
        if expect:
            document["expect"] = expect

        author = who or _who()
        text = _layer_text(path, document, name)
        layer = parse_layer(name, text)
        commit = git_commit(settings.baselines)
        before = path.read_bytes() if path.exists() else None
        # The file and the record change together: the database's write lock is
        # taken first, and the old file comes back if the record fails. Stop
        # signals wait until both are done.
        with _signals_held():
            try:
                with store.transaction():
                    write_atomic(path, text)
                    version = store.baseline_version(
                        name,
                        layer.content_hash,
                        text,
                        git_commit=commit,
                        author=author,
                        reason=reason,
                    )
                    ids = [e["id"] for e in episodes]
                    store.close_episodes(ids, "accepted", author, reason)
            except BaseException:
                _restore(path, before)
                raise
        log.info(
            "drift_accepted", host=host, items=len(episodes), baseline_version=version
        )
    finally:
        store.close()

    return episodes


def _pin_value(value: Any) -> Any:
    return {"equals": value} if isinstance(value, dict) else value


def _groups_of(settings: Settings, host: str) -> tuple[str, ...]:
    with inventory_source(settings) as inventory:
        try:
            targets = resolve_targets(inventory, None)
        except CollectError:
            return ()
    for target in targets:
        if target.name == host:
            return target.groups

    return ()
