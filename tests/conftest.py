"""Shared fixtures: the real driftd command, temporary state, fact dumps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACTS = ROOT / "tests" / "fixtures" / "facts"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Driftd:
    """The real ``driftd`` command with its own database and baselines."""

    home: Path
    db: Path
    baselines: Path
    inventory: str | None = None
    config: str | None = None

    def __call__(
        self, *args: str, check: int | None = None, timeout: float = 600
    ) -> Result:
        argv = [sys.executable, "-m", "driftd", *args, "--db", str(self.db)]
        argv += ["--baselines", str(self.baselines)]
        if self.inventory:
            argv += ["-i", self.inventory]
        if self.config:
            argv += ["--config", self.config]
        env = {**os.environ, "HOME": str(self.home), "DRIFTD_CONFIG": ""}
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        result = Result(done.returncode, done.stdout, done.stderr)
        if check is not None:
            assert result.code == check, (
                f"exit {result.code}\n{result.out}\n{result.err}"
            )

        return result


@pytest.fixture
def driftd(tmp_path: Path) -> Iterator[Driftd]:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    yield Driftd(tmp_path, tmp_path / "state" / "driftd.db", baselines)


def fact_files() -> list[Path]:
    """Every shared fact dump except the one that is not facts."""
    return sorted(p for p in FACTS.glob("*.json") if "unreachable" not in p.name)


def _fleet_fixture() -> Any:
    from tests.fleet import fleet_fixture_factory

    return fleet_fixture_factory(3, scope="module", name="fleet")


fleet = _fleet_fixture()
