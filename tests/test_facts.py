"""Real fact dumps from public projects: every shape reads, none drifts from itself."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from driftd.baseline import DEFAULT_IGNORE, Expected
from driftd.compare import compare
from driftd.snapshot import load_dump_text, unwrap
from tests.conftest import Driftd, fact_files


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        items = [shuffled(v, rng) for v in value]
        rng.shuffle(items)
        return items
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)

    return value


@pytest.mark.parametrize("path", fact_files(), ids=lambda p: p.stem)
def test_every_dump_reads_and_matches_itself_however_serialised(path: Path) -> None:
    text = path.read_text()
    snapshot = load_dump_text(text, path.name)
    expected = Expected(snapshot.data, [], DEFAULT_IGNORE, [])

    assert snapshot.data, "nothing read"
    assert compare(expected, snapshot).items == []

    document = unwrap(json.loads(text))
    variant = json.dumps(shuffled(document, random.Random(7)))
    assert compare(expected, load_dump_text(variant, path.name)).items == []


def test_the_envelopes_agree(tmp_path: Path) -> None:
    source = next(p for p in fact_files() if p.name.startswith("debian-12.5"))
    facts = json.loads(source.read_text())["ansible_facts"]
    shapes = {
        "tree": json.dumps({"ansible_facts": facts, "changed": False}),
        "adhoc": "mars | SUCCESS => " + json.dumps({"ansible_facts": facts}, indent=4),
        "bare": json.dumps(facts),
        "unprefixed": json.dumps(
            {k.removeprefix("ansible_"): v for k, v in facts.items()}
        ),
        "foreman": json.dumps(
            {"_type": "ansible", "_timestamp": "x", "ansible_facts": facts}
        ),
    }
    snapshots = {name: load_dump_text(text, name) for name, text in shapes.items()}
    reference = Expected(snapshots["tree"].data, [], DEFAULT_IGNORE, [])

    for name, snapshot in snapshots.items():
        assert compare(reference, snapshot).items == [], name


def test_diff_of_the_fedora_pair_lists_only_real_changes(driftd: Driftd) -> None:
    """A month apart, the second dump wrapping every string as __ansible_unsafe."""
    before, after = (
        next(p for p in fact_files() if p.name.startswith(prefix))
        for prefix in ("fedora-37-laptop_t1", "fedora-37-laptop_t2")
    )

    result = driftd("diff", str(before), str(after), "--json", check=2)

    paths = {i["path"] for i in result.json()["items"]}
    assert "facts.user_shell" in paths  # bash -> zsh: the owner changed the shell
    assert "facts.interfaces.tun0" in paths  # the VPN tunnel went away
    assert "facts.interfaces.docker0" in paths  # docker was installed
    assert not any(
        p.startswith(("facts.date_time", "facts.env", "facts.uptime")) for p in paths
    )
    assert not any("__ansible_unsafe" in json.dumps(i) for i in result.json()["items"])
