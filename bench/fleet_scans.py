"""Figures 1, 2 and 6: whole scans of real SSH hosts on 127.0.0.1.

One fleet (tests/fleet.py) serves all three. Every host gets a captured
baseline first (plus the example all.yml), so a scan compares and records
for real; a scan of N hosts gets a baselines dir with those N hosts' files
only, as a fleet of N would have. Commands alternate in rotating order,
round after round, and each figure is a ratio of medians taken in the same
rounds.

Every run starts with cold SSH connections (its own, empty
ANSIBLE_SSH_CONTROL_PATH_DIR), as a scheduled scan an hour after the last one
would: otherwise a run would reuse the ControlPersist masters the previous
run (of either command) left open for 60 s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ANSIBLE_PLAYBOOK,
    BIN,
    DRIFTD,
    PYTHON,
    BenchError,
    Figure,
    Timed,
    check,
    child_env,
    json_events,
    median,
    run_timed,
    source,
    stamp_seconds,
)

PLAIN_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "plain-facts.yml"
CONFIG = """\
forks: 8
# The fleet shares this machine's network stack: its ports come and go with
# other fleets and tests, so they are left out of the comparison.
ignore: [ports]
"""
SCAN_HOSTS = 8
# `python -m driftd` that also reports the CPU of its own process and of its
# children (ansible-playbook, its forks, ssh), for one diagnostic run.
SPLIT_CPU = """
import json, resource, runpy, sys
sys.argv = ["driftd", *sys.argv[1:]]
try:
    runpy.run_module("driftd", run_name="__main__")
finally:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"event": "bench_rusage",
                      "own": own.ru_utime + own.ru_stime,
                      "children": kids.ru_utime + kids.ru_stime}), file=sys.stderr)
"""


@dataclass
class Setup:
    """The fleet's files: per size an inventory and a baselines dir holding only
    that size's hosts, plus the config and the databases."""

    work: Path
    names: list[str]
    inventories: dict[int, Path] = field(default_factory=dict)
    config: Path | None = None

    def inventory(self, hosts: int) -> Path:
        return self.inventories[hosts]

    def baselines(self, hosts: int) -> Path:
        return self.work / f"baselines-{hosts}"

    def db(self, hosts: int) -> Path:
        return self.work / "state" / f"scan-{hosts}.db"

    def cold_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        control = Path(tempfile.mkdtemp(prefix="cp-", dir=self.work / "cp"))
        return child_env(
            self.work, {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(control), **(extra or {})}
        )


def _prepare(fleet: Any, work: Path, sizes: Sequence[int]) -> Setup:
    setup = Setup(work, list(fleet.names))
    (work / "cp").mkdir()
    (work / "state").mkdir()
    setup.config = work / "driftd.yml"
    setup.config.write_text(CONFIG)
    full = fleet.write_inventory(work / "all-hosts.ini")
    captured = work / "captured"
    (captured / "hosts").mkdir(parents=True)
    shutil.copy(source() / "baselines" / "all.yml", captured / "all.yml")

    # Capture every host's baseline (one collection; also a warm-up).
    argv: list[Any] = [DRIFTD, "baseline", "capture", *setup.names, "-i", full]
    argv += ["--baselines", captured, "--config", setup.config]
    argv += ["--db", work / "state" / "capture.db"]
    check(
        run_timed(argv, setup.cold_env(), timeout=120 + 15 * len(setup.names)),
        "driftd baseline capture",
    )

    # driftd reads every file under baselines/ at start: a scan of N hosts
    # gets the baselines of those N hosts only, as a fleet of N would have.
    lines = full.read_text().splitlines()
    for size in sizes:
        path = work / f"hosts-{size}.ini"
        path.write_text("\n".join(lines[:size]) + "\n")
        setup.inventories[size] = path
        (setup.baselines(size) / "hosts").mkdir(parents=True)
        shutil.copy(captured / "all.yml", setup.baselines(size) / "all.yml")
        for name in setup.names[:size]:
            layer = captured / "hosts" / f"{name}.yml"
            shutil.copy(layer, setup.baselines(size) / "hosts" / layer.name)

    return setup


def _common(setup: Setup, hosts: int) -> list[Any]:
    return [
        "-i",
        setup.inventory(hosts),
        "--baselines",
        setup.baselines(hosts),
        "--config",
        setup.config,
    ]


# --- the three commands -------------------------------------------------------------


@dataclass
class ScanRun:
    """A driftd scan's wall time split by its own log: start-up (process start
    to scan_started), collection (ansible-runner), judging and recording, exit."""

    timed: Timed
    startup: float
    collection: float
    judging: float
    finish: float
    statuses: dict[str, int]
    own_cpu: float | None = None
    children_cpu: float | None = None


def driftd_scan(setup: Setup, hosts: int, *, split: bool = False) -> ScanRun:
    command: list[Any] = [PYTHON, "-c", SPLIT_CPU] if split else [DRIFTD]
    argv = [*command, "scan", "--no-daemon", "--json", "-v"]
    argv += [*_common(setup, hosts), "--db", setup.db(hosts)]
    timed = check(
        run_timed(argv, setup.cold_env(), timeout=120 + 15 * hosts),
        f"driftd scan of {hosts} hosts",
        ok=(0, 2, 3),
    )
    statuses: dict[str, int] = {}
    for host in json.loads(timed.out)["hosts"]:
        statuses[host["status"]] = statuses.get(host["status"], 0) + 1
    events = {e["event"]: e for e in json_events(timed.err)}
    try:
        started = stamp_seconds(events["scan_started"]["timestamp"])
        collected = stamp_seconds(events["collection_finished"]["timestamp"])
        finished = stamp_seconds(events["scan_finished"]["timestamp"])
        collection = float(events["collection_finished"]["seconds"])
    except KeyError as error:
        raise BenchError(f"driftd scan log lacks {error} (was -v honoured?)") from error
    end = timed.started + timed.wall

    return ScanRun(
        timed,
        startup=started - timed.started,
        collection=collection,
        judging=finished - collected,
        finish=end - finished,
        statuses=statuses,
        own_cpu=events.get("bench_rusage", {}).get("own"),
        children_cpu=events.get("bench_rusage", {}).get("children"),
    )


def collect_playbook(setup: Setup, hosts: int, extravars: Path) -> Timed:
    """driftd's own play with driftd's settings, straight from ansible-playbook."""
    from driftd.config import load

    settings = load(str(setup.config))
    names = setup.names[:hosts]
    argv: list[Any] = [ANSIBLE_PLAYBOOK, "-i", setup.inventory(hosts)]
    argv += ["-l", ",".join(names)]
    argv += ["-f", str(max(1, min(settings.forks, hosts))), "-e", f"@{extravars}"]
    argv.append(source() / "playbooks" / "collect.yml")
    # The environment driftd.collect.collect() gives ansible-runner.
    env = setup.cold_env(
        {
            "PATH": f"{BIN}:{child_env(setup.work)['PATH']}",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": str(settings.host_key_checking),
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }
    )
    return check(
        run_timed(argv, env, timeout=120 + 15 * hosts, keep_output=True),
        f"ansible-playbook collect.yml on {hosts} hosts",
    )


def plain_playbook(setup: Setup, hosts: int) -> Timed:
    """setup, package_facts and service_facts with Ansible's own defaults."""
    argv: list[Any] = [ANSIBLE_PLAYBOOK, "-i", setup.inventory(hosts), PLAIN_PLAYBOOK]
    return check(
        run_timed(argv, setup.cold_env(), timeout=120 + 30 * hosts),
        f"ansible-playbook plain-facts.yml on {hosts} hosts",
    )


def extra_vars(setup: Setup, hosts: int) -> Path:
    """The extra vars driftd.collect.collect() passes, computed by driftd itself."""
    from driftd.baseline import BaselineSet
    from driftd.config import load
    from driftd.scan import files_to_stat

    settings = load(str(setup.config))
    files = files_to_stat(settings, BaselineSet.load(setup.baselines(hosts)))
    document = {
        "driftd_sections": list(settings.sections),
        "driftd_files": sorted(set(files)),
        "driftd_gather_timeout": settings.gather_timeout,
        "driftd_task_timeout": settings.task_timeout,
        "driftd_become": settings.become,
    }
    path = setup.work / "extravars.json"
    path.write_text(json.dumps(document))

    return path


# --- figures ------------------------------------------------------------------------


def _rotate(
    commands: Sequence[tuple[str, Callable[[], Any]]], rounds: int, log: Any
) -> dict[str, list[Any]]:
    """Warm each command up once, then ``rounds`` rounds in rotating order."""
    samples: dict[str, list[Any]] = {name: [] for name, _ in commands}
    for name, command in commands:
        log(f"  warm-up: {name}")
        command()
    for number in range(rounds):
        shift = number % len(commands)
        for name, command in [*commands[shift:], *commands[:shift]]:
            result = command()
            samples[name].append(result)
            wall = result.timed.wall if isinstance(result, ScanRun) else result.wall
            log(f"  round {number + 1}/{rounds}: {name} {wall:.2f} s")
    return samples


def _statuses(runs: Sequence[ScanRun]) -> str:
    seen: dict[str, int] = {}
    for run in runs:
        for status, count in run.statuses.items():
            seen[status] = seen.get(status, 0) + count
    return ", ".join(f"{n} {s}" for s, n in sorted(seen.items()))


def scan_figures(setup: Setup, rounds: int, log: Any) -> list[Figure]:
    extravars = extra_vars(setup, SCAN_HOSTS)
    samples = _rotate(
        [
            ("driftd scan", lambda: driftd_scan(setup, SCAN_HOSTS)),
            ("collect.yml", lambda: collect_playbook(setup, SCAN_HOSTS, extravars)),
            ("plain", lambda: plain_playbook(setup, SCAN_HOSTS)),
        ],
        rounds,
        log,
    )
    runs: list[ScanRun] = samples["driftd scan"]
    log("  one more driftd scan, splitting its CPU between itself and Ansible")
    split = driftd_scan(setup, SCAN_HOSTS, split=True)
    lone = collect_playbook(setup, SCAN_HOSTS, extravars)
    driftd_walls = [r.timed.wall for r in runs]
    collect_walls = [t.wall for t in samples["collect.yml"]]
    plain_walls = [t.wall for t in samples["plain"]]
    driftd_cpu = median([r.timed.cpu for r in runs])
    collect_cpu = median([t.cpu for t in samples["collect.yml"]])
    plain_cpu = median([t.cpu for t in samples["plain"]])
    d, c, p = median(driftd_walls), median(collect_walls), median(plain_walls)
    phases = (
        f"driftd's own time (medians): start-up to scan_started "
        f"{median([r.startup for r in runs]):.2f} s, ansible-runner "
        f"{median([r.collection for r in runs]):.2f} s, judging+recording "
        f"{median([r.judging for r in runs]):.2f} s, exit "
        f"{median([r.finish for r in runs]):.2f} s"
    )
    overhead = Figure(
        "scan_overhead_ratio",
        d / c,
        target=("<=", 1.05),
        context=(
            f"driftd scan {d:.2f} s / ansible-playbook collect.yml {c:.2f} s, "
            f"{SCAN_HOSTS} hosts, medians of {rounds}"
        ),
        details=[
            f"driftd scan --no-daemon walls: {_list(driftd_walls)} s "
            f"(host states: {_statuses(runs)})",
            f"ansible-playbook collect.yml (pipelining, forks 8, driftd's extra "
            f"vars and environment) walls: {_list(collect_walls)} s",
            f"controller CPU (user+sys of the command and its children): driftd "
            f"{driftd_cpu:.2f} s, collect.yml {collect_cpu:.2f} s, ratio "
            f"{driftd_cpu / collect_cpu:.2f}",
            phases,
            f"CPU split of one more driftd scan ({split.timed.wall:.2f} s): its own "
            f"process {split.own_cpu or 0:.2f} s (imports, inventory, baselines, "
            f"ansible-runner's event loop, judging, recording), its children "
            f"(ansible-playbook with runner's event callback, forks, ssh) "
            f"{split.children_cpu or 0:.2f} s; collect.yml run next to it: "
            f"{lone.cpu:.2f} s CPU, {lone.wall:.2f} s wall",
            f"extra time over the bare play: {d - c:+.2f} s per scan",
        ],
    )
    smart = Figure(
        "smart_collection_ratio",
        d / p,
        target=("<=", 0.45),
        context=(
            f"driftd scan {d:.2f} s / plain setup+package_facts+service_facts "
            f"{p:.2f} s (Ansible defaults), {SCAN_HOSTS} hosts, medians of {rounds}"
        ),
        details=[
            f"plain playbook walls: {_list(plain_walls)} s",
            f"controller CPU: driftd {driftd_cpu:.2f} s, plain {plain_cpu:.2f} s",
            f"driftd's play alone (ansible-playbook collect.yml) / plain: "
            f"{c / p:.3f}; the rest of the ratio is driftd's overhead (figure 1)",
        ],
    )
    return [overhead, smart]


def growth_figures(
    setup: Setup, sizes: Sequence[int], rounds: int, log: Any
) -> list[Figure]:
    commands = [(f"{n} hosts", _bind_scan(setup, n)) for n in sizes]
    samples = _rotate(commands, rounds, log)
    figures = []
    per_host = {}
    for size in sizes:
        runs: list[ScanRun] = samples[f"{size} hosts"]
        wall = median([r.timed.wall for r in runs])
        per_host[size] = wall / size
        figures.append(
            Figure(
                f"hosts_per_minute_{size}",
                size * 60 / wall,
                unit="hosts/min",
                context=(
                    f"{wall:.1f} s per scan of {size}, {wall / size:.2f} s/host"
                    f" ({per_host[size] / per_host[sizes[0]]:.2f}x the "
                    f"{sizes[0]}-host cost per host), medians of {rounds}"
                ),
                details=[
                    f"{size} hosts: walls {_list([r.timed.wall for r in runs])} s; "
                    f"ansible-runner {median([r.collection for r in runs]):.2f} s, "
                    f"start-up {median([r.startup for r in runs]):.2f} s, "
                    f"judging+recording {median([r.judging for r in runs]):.2f} s; "
                    f"controller CPU {median([r.timed.cpu for r in runs]):.2f} s; "
                    f"host states: {_statuses(runs)}"
                ],
            )
        )
    return figures


def _bind_scan(setup: Setup, size: int) -> Callable[[], ScanRun]:
    return lambda: driftd_scan(setup, size)


def _list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def run(
    work: Path,
    *,
    scan: bool,
    growth: bool,
    sizes: Sequence[int],
    rounds: int,
    growth_rounds: int,
    port_base: int,
    log: Any,
) -> list[Figure]:
    from tests.fleet import Fleet

    available, reason = Fleet.available()
    if not available:
        raise BenchError(f"no SSH fleet here: {reason}")
    needed = sorted({*(sizes if growth else ()), *((SCAN_HOSTS,) if scan else ())})
    figures: list[Figure] = []
    log(f"fleet of {needed[-1]} hosts on {port_base + 1}..{port_base + needed[-1]}")
    with Fleet(needed[-1], port_base=port_base, prefix="bench") as fleet:
        setup = _prepare(fleet, work, needed)
        if scan:
            log("figures 1-2: driftd scan vs collect.yml vs plain playbook")
            figures += scan_figures(setup, rounds, log)
        if growth:
            log(f"figure 6: driftd scan of {', '.join(map(str, sizes))} hosts")
            figures += growth_figures(setup, sizes, growth_rounds, log)
    return figures
