"""Figure 7: how long ``driftd --help`` takes, against a bare ``python -c pass``.

Both run with the same interpreter, alternating, after a warm-up. Children
get a bytecode cache (PYTHONPYCACHEPREFIX under the bench's temp dir), as an
installed driftd has; the same command as this machine's environment runs it
(PYTHONDONTWRITEBYTECODE=1 and no __pycache__ beside the sources, so
driftd's own modules compile on every start) is reported as context.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench.common import (
    DRIFTD,
    PYTHON,
    Figure,
    check,
    child_env,
    median,
    run_timed,
    spread,
)


def _alternate(
    commands: list[list[Any]], env: dict[str, str], runs: int
) -> list[list[float]]:
    walls: list[list[float]] = [[] for _ in commands]
    for argv in commands:
        check(run_timed(argv, env, timeout=60), str(argv[-1]))  # warm-up
    for _ in range(runs):
        for index, argv in enumerate(commands):
            timed = check(run_timed(argv, env, timeout=60), " ".join(map(str, argv)))
            walls[index].append(timed.wall)
    return walls


def _heaviest_imports(env: dict[str, str], count: int = 5) -> str:
    """The top-level imports that cost ``driftd --help`` the most (-X importtime)."""
    timed = run_timed([PYTHON, "-X", "importtime", DRIFTD, "--help"], env, timeout=60)
    costs: list[tuple[int, str]] = []
    for line in timed.err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 1:
            costs.append((int(match.group(1)), match.group(3)))
    costs.sort(reverse=True)
    return ", ".join(f"{name} {micro / 1000:.0f} ms" for micro, name in costs[:count])


def figures(work: Path, *, runs: int, log: Any) -> list[Figure]:
    env = child_env(work)
    help_walls, python_walls = _alternate(
        [[DRIFTD, "--help"], [PYTHON, "-c", "pass"]], env, runs
    )
    # The measured copy of driftd, without the bytecode cache.
    as_is = dict(os.environ, DRIFTD_CONFIG="", PYTHONPATH=env.get("PYTHONPATH", ""))
    as_is_walls = _alternate([[DRIFTD, "--help"]], as_is, max(3, runs // 2))[0]
    heaviest = _heaviest_imports(env)
    h, p = median(help_walls), median(python_walls)
    log(f"  driftd --help {h * 1000:.0f} ms, python -c pass {p * 1000:.0f} ms")
    return [
        Figure(
            "help_ms",
            h * 1000,
            unit="ms",
            target=("<=", 300),
            context=f"`driftd --help`, median of {runs}, range {_ms(help_walls)} ms",
            details=[
                f"heaviest imports at start-up (cumulative): {heaviest}",
                f"as this machine's environment runs it (no bytecode cache for "
                f"driftd/): median {median(as_is_walls) * 1000:.0f} ms, range "
                f"{_ms(as_is_walls)} ms",
            ],
        ),
        Figure(
            "help_vs_python_ratio",
            h / p,
            context=(
                f"`python -c pass` {p * 1000:.0f} ms (median of {runs}, range "
                f"{_ms(python_walls)} ms), same interpreter, alternating"
            ),
        ),
    ]


def _ms(values: list[float]) -> str:
    return spread([v * 1000 for v in values])
