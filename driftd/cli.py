"""driftd's command line: parses options, calls the engine, prints the result.

Exit status of ``scan`` and ``diff``: 0 no drift, 2 drift found, 3 no drift
but some hosts could not be checked, 1 error.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from types import FrameType
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_HELP = """Exit status: 0 no drift, 2 drift found, 3 no drift but something
could not be checked (hosts unreachable, failed, partial or without a baseline;
for diff, parts missing from the actual file), 1 error."""


# --- options shared by every command ------------------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep a global option wherever it was given: before or after the command.

    What was typed on the command line wins over the environment and defaults,
    whichever of the two places saw it; typed twice, the later one wins.
    """
    root = ctx.find_root()
    root.ensure_object(dict)
    name = param.name
    if value is None or name is None:
        return value
    if isinstance(value, str) and not value.strip():
        raise click.BadParameter("must not be empty", param=param)

    typed = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    if typed:
        root.obj[name] = value
        root.obj.setdefault("typed", set()).add(name)
    elif name not in root.obj.get("typed", set()):
        root.obj.setdefault(name, value)

    return value


def global_options(function: F) -> F:
    """-i, --config, --db, --baselines and -v, accepted before or after a command."""
    options = [
        click.option(
            "-i",
            "--inventory",
            metavar="SOURCE",
            expose_value=False,
            callback=_remember,
            help="Ansible inventory: anything `ansible -i` takes (default: localhost).",
        ),
        click.option(
            "--config",
            metavar="FILE",
            expose_value=False,
            callback=_remember,
            envvar="DRIFTD_CONFIG",
            help="Config file (also $DRIFTD_CONFIG).",
        ),
        click.option(
            "--db",
            metavar="PATH",
            expose_value=False,
            callback=_remember,
            help="History database.",
        ),
        click.option(
            "--baselines",
            metavar="DIR",
            expose_value=False,
            callback=_remember,
            help="Baselines directory.",
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            expose_value=False,
            callback=_remember,
            help="Log more (-v info, -vv debug), to stderr.",
        ),
    ]
    for option in reversed(options):
        function = option(function)

    return function


VERSION = click.IntRange(min=1, max=2**62)
ID = click.IntRange(min=1, max=2**62)


def _given(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A filter typed as an empty string filters nothing: say so, not list all."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", param=param)

    return value


host_option = click.option(
    "--host", metavar="HOST", callback=_given, help="Only this host."
)
path_option = click.option(
    "--path",
    "path_glob",
    metavar="GLOB",
    callback=_given,
    help="Only paths this glob covers.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for programs."
)


def settings() -> Any:
    """The settings in force for this command: defaults, config file, options."""
    from driftd import config

    obj = click.get_current_context().find_root().obj or {}
    loaded = config.load(obj.get("config"))

    return config.apply(
        loaded,
        {
            "inventory": obj.get("inventory"),
            "db": obj.get("db"),
            "baselines": obj.get("baselines"),
        },
    )


def _setup_logging() -> None:
    from driftd import log

    verbosity = (click.get_current_context().find_root().obj or {}).get("verbose", 0)
    log.configure(level={0: "warning", 1: "info"}.get(verbosity, "debug"))


# --- printing -----------------------------------------------------------------------


def _show(value: Any, width: int = 60, *, typed: bool = False) -> str:
    """A value in a table cell: JSON, but plain text unquoted unless its type
    is the news (``typed``, for type_changed items) or it would not be seen."""
    if value is None:
        return "-"
    plain = isinstance(value, str) and not typed and value.strip() == value != ""
    text = value if plain else json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    # Bytes that were not UTF-8 (carried as surrogate escapes) show as \xNN.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    return text if len(text) <= width else text[: width - 1] + "…"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    if not rows:
        return
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [[h.upper() for h in headers], *cells]
    click.echo(
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in lines
        )
    )


def _print_json(document: Any) -> None:
    click.echo(
        json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True, default=str)
    )


def _print_items(host: str, items: Iterable[Any]) -> None:
    _table(
        [
            (
                host,
                i.path_text,
                i.kind,
                _show(i.expected, typed=i.kind == "type_changed"),
                _show(i.actual, typed=i.kind == "type_changed"),
            )
            for i in items
        ],
        ("host", "path", "kind", "expected", "actual"),
    )


def _print_hidden(hidden: dict[str, int]) -> None:
    click.echo("\nIgnore rules (items hidden in this comparison):")
    _table(list(hidden.items()), ("rule", "hidden"))


# --- commands -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_HELP)
@global_options
@click.version_option(package_name="driftd")
def main() -> None:
    """driftd: configuration-drift detection for fleets managed with Ansible."""


@main.command(epilog=EXIT_HELP)
@global_options
@click.option(
    "--limit",
    "-l",
    metavar="PATTERN",
    callback=_given,
    help="Only hosts matching this Ansible pattern.",
)
@click.option(
    "--no-daemon", is_flag=True, help="Scan in this process even if a daemon runs."
)
@json_option
def scan(limit: str | None, no_daemon: bool, as_json: bool) -> None:
    """Collect facts from hosts, compare them with their baselines, record drift.

    With a driftd daemon running for the same inventory, database and
    baselines, the scan runs in the daemon (as soon as its hosts are free);
    otherwise here. Either way two scans never write the same host at once.
    """
    from driftd.daemon import request_scan
    from driftd.scan import run_scan

    _setup_logging()
    current = settings()
    report = None if no_daemon else request_scan(current, limit)
    if report is None:
        with _signals_cancel() as stopped:
            report = run_scan(current, limit=limit, cancelled=stopped.is_set).to_dict()
    if report["status"] == "interrupted":
        click.echo(f"driftd: scan {report['scan_id']} interrupted", err=True)
    if as_json:
        _print_json(report)
        sys.exit(report["exit_code"])

    hosts = report["hosts"]
    _table(
        [
            (
                h["host"],
                h["status"],
                len(h["items"]),
                h["opened"],
                h["resolved"],
                _show(h["message"], 70),
            )
            for h in hosts
        ],
        ("host", "status", "drift", "new", "resolved", "message"),
    )
    drifted = [h for h in hosts if h["items"]]
    if drifted:
        click.echo()
        _table(
            [
                (
                    h["host"],
                    i["path"],
                    i["kind"],
                    _show(i["expected"], typed=i["kind"] == "type_changed"),
                    _show(i["actual"], typed=i["kind"] == "type_changed"),
                )
                for h in drifted
                for i in h["items"]
            ],
            ("host", "path", "kind", "expected", "actual"),
        )
    click.echo(
        f"\nscan {report['scan_id']} {report['status']}: {_count(len(hosts), 'host')}, "
        f"{len(drifted)} with drift"
    )
    sys.exit(report["exit_code"])


@contextlib.contextmanager
def _signals_cancel() -> Iterator[threading.Event]:
    """SIGTERM, SIGINT and SIGHUP cancel the scan in progress (Ansible stops,
    hosts already judged stay recorded, temp files go) instead of killing
    driftd half-way."""
    stopped = threading.Event()

    def cancel(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {number: signal.signal(number, cancel) for number in caught}
    try:
        yield stopped
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@main.command()
@global_options
@click.option(
    "--interval",
    type=click.IntRange(min=1, max=366 * 86400),
    metavar="SECONDS",
    help="Scan every host this often, whatever the config says.",
)
def daemon(interval: int | None) -> None:
    """Run as a service: scheduled scans, baseline reloads, ad hoc scans.

    SIGHUP reloads config and baselines; SIGTERM and SIGINT stop the running
    scan (marked interrupted) and exit. Logs go to stdout: JSON lines unless
    stdout is a terminal.
    """
    from driftd import log
    from driftd.daemon import Daemon

    obj = click.get_current_context().find_root().obj or {}
    verbosity = obj.get("verbose", 0)
    log.configure(level="debug" if verbosity > 1 else "info", stream=sys.stdout)
    overrides = {k: obj.get(k) for k in ("inventory", "db", "baselines")}
    Daemon(obj.get("config"), overrides, interval).run()


@main.command()
@global_options
@json_option
def status(as_json: bool) -> None:
    """Whether the daemon runs, what it is doing, each group's last scan.

    Exit status: 0 the daemon runs, 3 it does not, 1 error.
    """
    from driftd.config import ConfigError, Settings, apply
    from driftd.daemon import daemon_status

    try:
        current = settings()
    except ConfigError as error:
        # Status matters most while the config is being mended: ask anyway.
        click.echo(f"driftd: warning: {error}; asking the default socket", err=True)
        current = apply(Settings(), {})
    state = daemon_status(current) or {"running": False, "socket": str(current.socket)}
    if as_json:
        _print_json(state)
        sys.exit(0 if state["running"] else 3)
    if not state["running"]:
        click.echo(f"driftd daemon: not running (no answer on {current.socket})")
        sys.exit(3)

    click.echo(
        f"driftd daemon: running, pid {state['pid']}, since {state['started']}, "
        f"{state['hosts']} hosts, db {state['db']}"
    )
    current_job = state.get("current")
    if current_job:
        click.echo(f"now: {current_job['trigger']} scan since {current_job['since']}")
    else:
        click.echo("now: idle")
    if state.get("last"):
        click.echo(f"last: {state['last']['summary']} at {state['last']['at']}")
    failed = state.get("reload_failed")
    if failed:
        click.echo(
            f"reload failed at {failed['at']}: the previous version stays in force"
        )
        for problem in failed["problems"]:
            click.echo(f"  {problem}")
    rows = []
    for group, entry in sorted(state.get("groups", {}).items()):
        results = entry["hosts"].values()
        rows.append(
            (
                group,
                entry["last_scan"]["at"],
                entry["last_scan"]["id"],
                len(results),
                sum(1 for r in results if r["drift"]),
                sum(1 for r in results if r["status"] != "ok"),
            )
        )
    if rows:
        click.echo()
        _table(rows, ("group", "last scan", "scan", "hosts", "drifted", "not checked"))


@main.command()
@global_options
@host_option
@path_option
@json_option
def drift(host: str | None, path_glob: str | None, as_json: bool) -> None:
    """Drift that is open now."""
    from driftd.scan import open_store

    store = open_store(settings(), create=False)
    episodes = store.open_episodes(host, path_glob)
    store.close()
    if as_json:
        _print_json(episodes)
        return
    if not episodes:
        click.echo("no open drift")
        return
    _table(
        [
            (
                e["host"],
                e["path"],
                e["kind"],
                _show(e["expected"], 40, typed=e["kind"] == "type_changed"),
                _show(e["actual"], 40, typed=e["kind"] == "type_changed"),
                e["first_seen"][:19],
                e["seen_count"],
            )
            for e in episodes
        ],
        ("host", "path", "kind", "expected", "actual", "since", "seen"),
    )


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])\Z")


def parse_when(text: str) -> str:
    """``7d``, ``12h``, ``30m`` ago, or an ISO date/time, as a UTC timestamp."""
    try:
        return _when(text)
    except (OverflowError, ValueError) as error:
        raise click.BadParameter(
            f"{text!r}: use 7d, 12h, 30m or an ISO date ({error})",
            param_hint="'--since'",
        ) from error


def _when(text: str) -> str:
    match = _RELATIVE.match(text.strip())
    if match:
        unit = {
            "s": "seconds",
            "m": "minutes",
            "h": "hours",
            "d": "days",
            "w": "weeks",
        }[match.group(2)]
        moment = datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
    else:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)

    return (
        moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@main.command()
@global_options
@host_option
@click.option(
    "--since",
    metavar="WHEN",
    callback=_given,
    help="Since 7d, 12h, 30m ago or an ISO date.",
)
@path_option
@click.option(
    "--last",
    type=click.IntRange(min=1, max=10**9),
    default=1000,
    show_default=True,
    metavar="N",
    help="At most the N newest episodes.",
)
@json_option
def history(
    host: str | None, since: str | None, path_glob: str | None, last: int, as_json: bool
) -> None:
    """Drift episodes, newest first: when each was first and last seen, how it ended."""
    from driftd.scan import open_store

    since_stamp = parse_when(since) if since else None
    store = open_store(settings(), create=False)
    episodes = store.history(host, since_stamp, path_glob, limit=last)
    store.close()
    if as_json:
        _print_json(episodes)
        return
    if not episodes:
        click.echo("no drift in history")
        return
    _table(
        [
            (
                e["host"],
                e["path"],
                e["kind"],
                e["state"],
                e["first_seen"][:19],
                (e["closed_at"] or e["last_seen"])[:19],
                e["seen_count"],
                _show(e["close_note"], 30),
            )
            for e in episodes
        ],
        ("host", "path", "kind", "state", "first seen", "last/closed", "seen", "note"),
    )


@main.command()
@global_options
@click.argument("scan_id", type=ID)
@click.option("--explain", is_flag=True, help="Also count what each ignore rule hid.")
@json_option
def show(scan_id: int, explain: bool, as_json: bool) -> None:
    """One scan: its hosts and the drift open during it."""
    from driftd.scan import DriftdError, open_store

    current = settings()
    store = open_store(current, create=False)
    scan_row = store.scan(scan_id)
    if scan_row is None:
        store.close()
        raise DriftdError(f"no scan {scan_id} in {current.db}")
    store.close()
    for result in scan_row["results"]:
        result["hidden"] = json.loads(result["hidden"]) if result["hidden"] else {}
    if as_json:
        _print_json(scan_row)
        return

    click.echo(
        f"scan {scan_id}: {scan_row['status']}, started {scan_row['started_at']}, "
        f"finished {scan_row['finished_at'] or '-'}, target {scan_row['target']}"
    )
    _table(
        [
            (
                r["host"],
                r["status"],
                r["items"],
                r["opened"],
                r["closed"],
                _show(r["message"], 60),
            )
            for r in scan_row["results"]
        ],
        ("host", "status", "drift", "new", "resolved", "message"),
    )
    if scan_row["episodes"]:
        click.echo()
        _table(
            [
                (
                    e["host"],
                    e["path"],
                    e["kind"],
                    e["state"],
                    _show(e["expected"], 40, typed=e["kind"] == "type_changed"),
                    _show(e["actual"], 40, typed=e["kind"] == "type_changed"),
                )
                for e in scan_row["episodes"]
            ],
            ("host", "path", "kind", "state", "expected", "actual"),
        )
    for result in scan_row["results"] if explain else []:
        click.echo(f"\n{result['host']}:", nl=False)
        _print_hidden(result["hidden"])


@main.command(epilog=EXIT_HELP)
@global_options
@click.argument("expected", type=click.Path(dir_okay=False, path_type=FsPath))
@click.argument("actual", type=click.Path(dir_okay=False, path_type=FsPath))
@click.option("--explain", is_flag=True, help="Also count what each ignore rule hid.")
@json_option
def diff(expected: FsPath, actual: FsPath, explain: bool, as_json: bool) -> None:
    """Compare two fact dumps (or baseline files) without touching any host.

    Each file may be the JSON `ansible HOST -m setup --tree DIR` writes, the
    text `ansible -m setup` prints after `HOST | SUCCESS =>`, a bare
    ansible_facts object or fact cache, or a driftd baseline file.
    """
    from driftd.scan import diff_files

    comparison = diff_files(settings(), expected, actual, explain=explain)
    if as_json:
        document: dict[str, Any] = {
            "items": [i.to_dict() for i in comparison.items],
            "unobserved": comparison.unobserved,
        }
        if explain:
            document["hidden"] = comparison.hidden
        _print_json(document)
    else:
        if comparison.items:
            _print_items(actual.name, comparison.items)
        else:
            click.echo("no drift")
        if comparison.unobserved:
            click.echo(
                f"not in {actual.name}, so not compared: "
                + ", ".join(comparison.unobserved)
            )
        if explain:
            _print_hidden(comparison.hidden)
    if comparison.items:
        sys.exit(2)
    sys.exit(3 if comparison.unobserved else 0)


@main.command("check-config")
@global_options
def check_config() -> None:
    """Check the config file and every baseline file; say what is in force."""
    from driftd.scan import baseline_warnings, load_baselines

    current = settings()
    baselines = load_baselines(current)
    click.echo(
        f"config ok: inventory {current.inventory or 'localhost (local connection)'}, "
        f"db {current.db}, baselines {current.baselines}"
    )
    click.echo(
        f"baselines ok: {len(baselines.layers)} layer files "
        f"({', '.join(sorted(x.name for x in baselines.layers.values())) or 'none'})"
    )
    for warning in baseline_warnings(current, baselines):
        click.echo(f"driftd: warning: {warning}", err=True)


@main.group()
def baseline() -> None:
    """Capture, accept, list, show and compare baseline versions."""


@baseline.command("capture")
@global_options
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--from-history",
    is_flag=True,
    help="Use the newest stored snapshot instead of collecting.",
)
def baseline_capture(hosts: tuple[str, ...], from_history: bool) -> None:
    """Write each HOST's current snapshot as its baseline (baselines/hosts/HOST.yml)."""
    from driftd.scan import capture

    if not all(host.strip() for host in hosts):
        raise click.BadParameter("a host name must not be empty", param_hint="HOSTS")
    _setup_logging()
    results = capture(settings(), hosts, from_history=from_history)
    for host, path, outcome in results:
        click.echo(f"{host}: {outcome} {path}".rstrip())
    if any(outcome != "captured" for _, _, outcome in results):
        sys.exit(3)


@baseline.command("accept")
@global_options
@click.argument("host")
@path_option
@click.option(
    "--reason",
    required=True,
    help="Why this drift is the new normal (kept in history).",
)
def baseline_accept(host: str, path_glob: str | None, reason: str) -> None:
    """Turn HOST's open drift into a new baseline version; close it as accepted."""
    from driftd.scan import accept

    if not host.strip():
        raise click.BadParameter("must not be empty", param_hint="HOST")
    _setup_logging()
    episodes = accept(settings(), host, reason=reason, path_glob=path_glob)
    for episode in episodes:
        click.echo(f"accepted {host} {episode['path']} ({episode['kind']})")


def _short_commit(commit: str | None) -> str:
    """``d4b95b5d02e7`` or ``d4b95b5d02e7+dirty`` (content beyond that commit)."""
    if not commit:
        return "-"
    head, plus, rest = commit.partition("+")

    return head[:12] + plus + rest


@baseline.command("list")
@global_options
@json_option
def baseline_list(as_json: bool) -> None:
    """Every recorded version of every baseline file."""
    from driftd.scan import open_store

    store = open_store(settings(), create=False)
    versions = store.baseline_versions()
    store.close()
    if as_json:
        _print_json(versions)
        return
    if not versions:
        click.echo("no baseline versions recorded yet (they are recorded by scans)")
        return
    _table(
        [
            (
                v["file"],
                v["version"],
                v["hash"][:12],
                v["created_at"][:19],
                _short_commit(v["git_commit"]),
                v["author"] or "-",
                _show(v["reason"], 40),
            )
            for v in versions
        ],
        ("file", "version", "hash", "recorded", "git", "author", "reason"),
    )


def _layer_file(root: FsPath, file: str) -> FsPath:
    """FILE inside the baselines directory, and a layer file: nothing else is
    read through these commands."""
    from driftd.baseline import is_layer_file
    from driftd.scan import DriftdError

    path = root / file
    inside = path.resolve().is_relative_to(root.resolve())
    if not inside or (path.exists() and not is_layer_file(path)):
        raise DriftdError(f"{file}: not a baseline file in {root}")

    return path


@baseline.command("show")
@global_options
@click.argument("file")
@click.option(
    "--version",
    "number",
    type=VERSION,
    help="An older version (default: the file as it is).",
)
def baseline_show(file: str, number: int | None) -> None:
    """Print a baseline file, or one of its recorded versions."""
    from driftd.scan import DriftdError, open_store

    current = settings()
    if number is None:
        path = _layer_file(current.baselines, file)
        if not path.is_file():
            raise DriftdError(f"{path}: no such baseline file")
        click.echo(
            path.read_text(encoding="utf-8", errors="backslashreplace"), nl=False
        )
        return
    store = open_store(current, create=False)
    text = store.baseline_content(file, number)
    store.close()
    if text is None:
        raise DriftdError(f"{file}: no version {number} recorded")
    click.echo(text, nl=False)


@baseline.command("diff")
@global_options
@click.argument("file")
@click.argument("old", type=VERSION)
@click.argument("new", type=VERSION, required=False)
def baseline_diff(file: str, old: int, new: int | None) -> None:
    """Line differences between two versions of a baseline file (NEW: the file now)."""
    import difflib

    from driftd.scan import DriftdError, open_store

    current = settings()
    store = open_store(current, create=False)
    before = store.baseline_content(file, old)
    after = store.baseline_content(file, new) if new is not None else None
    store.close()
    if before is None:
        raise DriftdError(f"{file}: no version {old} recorded")
    if new is None:
        path = _layer_file(current.baselines, file)
        after = (
            path.read_text(encoding="utf-8", errors="backslashreplace")
            if path.is_file()
            else ""
        )
    elif after is None:
        raise DriftdError(f"{file}: no version {new} recorded")
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        (after or "").splitlines(keepends=True),
        f"{file} v{old}",
        f"{file} v{new}" if new is not None else f"{file} (now)",
    )
    click.echo("".join(lines) or "no differences", nl=not lines)


def run() -> None:
    """Entry point: user mistakes become one clear message and exit status 1."""
    import sqlite3

    from driftd.errors import UserError

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("driftd: aborted", err=True)
        sys.exit(1)
    except UserError as error:
        for line in str(error).splitlines():
            click.echo(f"driftd: error: {line}", err=True)
        sys.exit(1)
    except sqlite3.OperationalError as error:
        # Locked past the busy timeout, read-only, disk full: the environment's.
        click.echo(f"driftd: error: the history database: {error}", err=True)
        sys.exit(1)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        click.echo(f"driftd: error: {where}{error.strerror or error}", err=True)
        sys.exit(1)
