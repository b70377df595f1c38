"""``python -m bench`` (or ``bench/run``): run driftd's benchmarks, write RESULTS.md.

Each figure prints as one line, ``NAME  VALUE  target TARGET  met|missed``
with short context; progress goes to stderr. Every temp dir, fleet and
process the run sets up is removed before it exits, also on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import comparison, daemon, fleet_scans, history, startup
from bench.common import ROOT, Figure, freeze_source, machine, work_dir

# Run order: quick and quiet first, the long daemon run last.
GROUPS = ("startup", "compare", "history", "scan", "growth", "daemon")
DISPLAY = ("scan", "compare", "history", "daemon", "growth", "startup")
NUMBERS = {
    "1": "scan",
    "2": "scan",
    "3": "compare",
    "4": "history",
    "5": "daemon",
    "6": "growth",
    "7": "startup",
}
TITLES = {
    "scan": "1-2. Scan overhead and smart collection (8 SSH hosts)",
    "compare": "3. Comparison, in-process",
    "history": "4. History database",
    "daemon": "5. Daemon memory and artifacts",
    "growth": "6. Growth with fleet size",
    "startup": "7. Start-up",
}
METHODS = {
    "scan": fleet_scans.__doc__,
    "compare": comparison.__doc__,
    "history": history.__doc__,
    "daemon": daemon.__doc__,
    "growth": fleet_scans.__doc__,
    "startup": startup.__doc__,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="driftd's benchmarks: one line per figure, also in RESULTS.md.",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated groups ({', '.join(GROUPS)}) or figure numbers 1-7",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds, 8 and 16 hosts, a 1/10 history, 10 daemon cycles",
    )
    parser.add_argument("--cycles", type=int, help="daemon scan cycles (default 500)")
    parser.add_argument(
        "--sample-every", type=int, help="daemon: sample RSS every N cycles"
    )
    parser.add_argument("--hosts", help="fleet sizes for figure 6 (default 8,16,32)")
    parser.add_argument("--rounds", type=int, help="rounds of figures 1-2 (default 5)")
    parser.add_argument(
        "--growth-rounds", type=int, help="rounds of figure 6 (default 3)"
    )
    parser.add_argument(
        "--history-scale", type=float, help="history size (default 1.0)"
    )
    parser.add_argument(
        "--port-base", type=int, default=23300, help="fleet ports (default 23300)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "RESULTS.md",
        help="where to write the results (default bench/RESULTS.md)",
    )
    options = parser.parse_args(argv)
    options.output = options.output.resolve()

    quick = options.quick
    options.cycles = options.cycles or (10 if quick else 500)
    options.sample_every = options.sample_every or max(1, options.cycles // 20)
    options.sizes = sorted(
        {int(n) for n in (options.hosts or ("8,16" if quick else "8,16,32")).split(",")}
    )
    options.rounds = options.rounds or (3 if quick else 5)
    options.growth_rounds = options.growth_rounds or (1 if quick else 3)
    options.history_scale = options.history_scale or (0.1 if quick else 1.0)
    if options.rounds < 3:
        parser.error("--rounds must be at least 3 (medians of at least 3 each)")
    if not 1 <= options.cycles <= 5000:
        parser.error("--cycles must be 1 to 5000")
    if any(not 1 <= n <= 99 for n in options.sizes):
        parser.error("--hosts sizes must be 1 to 99")
    if not 0 < options.history_scale <= 1:
        parser.error("--history-scale must be above 0 and at most 1")
    ports = range(options.port_base + 1, options.port_base + max(options.sizes) + 1)
    if not 1024 <= ports.start <= ports.stop <= 65535:
        parser.error("--port-base: the fleet's ports must lie in 1024..65535")
    if set(ports) & TEST_PORTS:
        parser.error("--port-base: the test suite's fleet uses 22221..22240")

    chosen = []
    for name in (options.only or ",".join(GROUPS)).split(","):
        group = NUMBERS.get(name.strip(), name.strip())
        if group not in GROUPS:
            parser.error(f"--only: unknown {name!r} (use {', '.join(GROUPS)} or 1-7)")
        chosen.append(group)
    options.groups = [g for g in GROUPS if g in chosen]

    return options


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The test suite's fleet (tests/fleet.py's default base 22220), maybe running now.
TEST_PORTS = set(range(22221, 22241))
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """Stop the run; a second Ctrl-C must not cut the clean-up short."""
    for number in STOPPING:
        signal.signal(number, signal.SIG_IGN)
    log(f"bench: signal {signum}, stopping and cleaning up (up to a minute)")
    raise KeyboardInterrupt(f"signal {signum}")


def run_group(group: str, options: argparse.Namespace, work: Path) -> list[Figure]:
    quick = options.quick
    jobs: dict[str, Callable[[], list[Figure]]] = {
        "startup": lambda: startup.figures(work, runs=5 if quick else 10, log=log),
        "compare": lambda: comparison.figures(
            runs=20 if quick else 60, deep_runs=3 if quick else 5, log=log
        ),
        "history": lambda: history.figures(
            work,
            scale=options.history_scale,
            runs=20,
            growth_count=400 if quick else 2000,
            log=log,
        ),
        "scan": lambda: fleet_scans.run(
            work,
            scan=True,
            growth="growth" in options.groups,
            sizes=options.sizes,
            rounds=options.rounds,
            growth_rounds=options.growth_rounds,
            port_base=options.port_base,
            log=log,
        ),
        "growth": lambda: fleet_scans.run(
            work,
            scan=False,
            growth=True,
            sizes=options.sizes,
            rounds=options.rounds,
            growth_rounds=options.growth_rounds,
            port_base=options.port_base,
            log=log,
        ),
        "daemon": lambda: daemon.figures(
            work, cycles=options.cycles, every=options.sample_every, log=log
        ),
    }
    return jobs[group]()


def _error(group: str, reason: str) -> Figure:
    return Figure(f"{group}_error", None, context=reason)


def write_results(
    path: Path,
    *,
    options: argparse.Namespace,
    argv: list[str],
    facts: dict[str, str],
    results: dict[str, list[Figure]],
    seconds: dict[str, float],
    loads: dict[str, tuple[float, float]],
    started: datetime,
) -> None:
    figures = [f for group in results.values() for f in group]
    lines = [
        "# driftd benchmarks",
        "",
        f"Written by `bench/run{' ' if argv else ''}{' '.join(argv)}`, started "
        f"{started:%Y-%m-%d %H:%M} UTC, took "
        f"{sum(seconds.values()) / 60:.0f} min. Run `bench/run --help` for options.",
        "",
        f"- machine: nproc {facts['nproc']}, {facts['cpu']}, {facts['memory']} RAM, "
        f"Linux {facts['kernel']}, load average at start {facts['load at start']} "
        "(a shared, noisy machine: every figure is a ratio or a time taken side "
        "by side in this run)",
        f"- versions: Python {facts['python']}, ansible-core {facts['ansible-core']}, "
        f"ansible-runner {facts['ansible-runner']}, deepdiff {facts['deepdiff']}, "
        f"SQLite {facts['sqlite']}, driftd {facts['driftd']}",
    ]
    notes = []
    if "daemon" in results and options.cycles != 500:
        notes.append(
            f"the daemon figures ran {options.cycles} cycles, not the default 500"
        )
    if "history" in results and options.history_scale != 1.0:
        notes.append(f"the history database was scaled by {options.history_scale:g}")
    if options.quick:
        notes.append("--quick: fewer rounds and runs than the full benchmark")
    missing = [g for g in GROUPS if g not in results]
    if missing:
        notes.append(f"not run this time: {', '.join(missing)}")
    lines += [f"- note: {n}" for n in notes]
    widths = (
        max(len(f.name) for f in figures),
        max(len(f.value_text()) for f in figures),
        max(len(f.target_text()) for f in figures),
    )
    lines += ["", "```text", *(f.line(widths) for f in figures), "```", ""]
    met = sum(1 for f in figures if f.verdict == "met")
    missed = [f.name for f in figures if f.verdict == "missed"]
    errors = [f.name for f in figures if f.verdict == "error"]
    lines.append(
        f"{met} targets met, {len(missed)} missed"
        + (f" ({', '.join(missed)})" if missed else "")
        + (f", {len(errors)} errors" if errors else "")
        + "."
    )
    lines += ["", "## Details", ""]
    for group, group_figures in results.items():
        took = (
            f"Took {seconds[group]:.0f} s; load average (1 min) "
            f"{loads[group][0]:.1f} before, {loads[group][1]:.1f} after."
            if seconds.get(group)
            else "Ran on the same fleet as figures 1-2 (time and load shown there)."
        )
        lines += [f"### {TITLES[group]}", "", took, ""]
        for figure in group_figures:
            for detail in figure.details:
                lines.append(f"- {figure.name}: {detail}")
        method = " ".join((METHODS[group] or "").split())
        lines += ["", f"Method: {method}", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def main(argv: list[str]) -> int:
    options = parse(argv)
    for number in STOPPING:
        signal.signal(number, _interrupt)
    started = datetime.now(UTC)
    results: dict[str, list[Figure]] = {}
    seconds: dict[str, float] = {}
    loads: dict[str, tuple[float, float]] = {}
    groups = list(options.groups)
    if "scan" in groups and "growth" in groups:
        groups.remove("growth")  # one fleet serves both
    widths = (34, 12, 12)
    try:
        with work_dir() as work:
            facts = machine(freeze_source(work))
            for group in groups:
                log(f"== {TITLES[group]}")
                clock = time.monotonic()
                load_before = os.getloadavg()[0]
                group_work = work / group
                group_work.mkdir()
                try:
                    figures = run_group(group, options, group_work)
                except KeyboardInterrupt:
                    raise
                except Exception as error:  # noqa: BLE001 (report it, run the rest)
                    log(f"   {group} failed: {type(error).__name__}: {error}")
                    figures = [_error(group, f"{type(error).__name__}: {error}")]
                seconds[group] = time.monotonic() - clock
                loads[group] = (load_before, os.getloadavg()[0])
                if group == "scan" and "growth" in options.groups:
                    results["scan"] = [
                        f for f in figures if not f.name.startswith("hosts_")
                    ]
                    results["growth"] = [
                        f for f in figures if f.name.startswith("hosts_")
                    ]
                    seconds["growth"] = 0.0
                else:
                    results[group] = figures
                for figure in figures:
                    print(figure.line(widths), flush=True)
    except KeyboardInterrupt:
        log("interrupted: cleaned up, no results written")
        return 130
    ordered = {g: results[g] for g in DISPLAY if g in results}
    write_results(
        options.output,
        options=options,
        argv=argv,
        facts=facts,
        results=ordered,
        seconds=seconds,
        loads=loads,
        started=started,
    )
    log(f"wrote {options.output}")
    failed = any(f.verdict == "error" for group in results.values() for f in group)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
