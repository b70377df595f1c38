"""End to end on real SSH hosts: capture, drift, accept, revert, unreachable, partial.

The fleet's hosts are overlay chroots of this machine sharing its network
stack, so every host sees the same listening ports; the ports section is
checked for the host's own sshd, and left out of the exact comparison.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Driftd
from tests.fleet import Fleet

# Leaf packages that exist on a Debian machine; the first one installed is removed.
REMOVABLE = ("less", "bzip2", "xz-utils", "nano", "file", "patch", "unzip")


@pytest.fixture(scope="module")
def env(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driftd]:
    home = tmp_path_factory.mktemp("fleet-scan")
    baselines = home / "baselines"
    baselines.mkdir()
    inventory = fleet.write_inventory(home / "hosts.ini", {"web": fleet.names[:2]})
    config = home / "driftd.yml"
    config.write_text("ignore: [ports]\nforks: 4\n")
    yield Driftd(
        home, home / "state" / "driftd.db", baselines, str(inventory), str(config)
    )


def run(driftd: Driftd, *args: str, check: int | None = None) -> Any:
    result = driftd(*args, "--json", check=check)
    return json.loads(result.out) if result.out.strip() else {}


def items_by_host(report: Any) -> dict[str, set[tuple[str, str]]]:
    return {
        h["host"]: {(i["path"], i["kind"]) for i in h["items"]} for h in report["hosts"]
    }


def removable_package(fleet: Fleet, host: str) -> str:
    for name in REMOVABLE:
        done = fleet.run(
            host, "dpkg-query", "-W", "-f", "${db:Status-Status}", name, check=False
        )
        if done.stdout.strip() == "installed":
            return name
    pytest.skip("no removable leaf package installed on this machine")


def test_fleet_drift_lifecycle(fleet: Fleet, env: Driftd) -> None:
    web1, web2, db1 = fleet.names

    captured = env("baseline", "capture", *fleet.names, check=0)
    assert captured.out.count("captured") == 3
    clean = run(env, "scan", check=0)
    assert {h["host"]: h["status"] for h in clean["hosts"]} == dict.fromkeys(
        fleet.names, "ok"
    )

    # Drift on web2: a config edit, a removed package, a new user.
    package = removable_package(fleet, web2)
    sshd_config = fleet.root(web2) / "etc/ssh/sshd_config"
    original = sshd_config.read_bytes()
    sshd_config.write_bytes(original + b"\nPermitRootLogin yes\n")
    fleet.run(web2, "dpkg", "-r", "--force-depends", package)
    fleet.run(web2, "useradd", "-M", "-s", "/bin/sh", "mallory")

    drifted = run(env, "scan", check=2)

    assert items_by_host(drifted) == {
        web1: set(),
        db1: set(),
        web2: {
            (f"packages.{package}", "removed"),
            ("users.mallory", "added"),
            ("groups.mallory", "added"),
            ('files["/etc/ssh/sshd_config"].checksum', "changed"),
            ('files["/etc/ssh/sshd_config"].size', "changed"),
            ('files["/etc/passwd"].checksum', "changed"),
            ('files["/etc/passwd"].size', "changed"),
            ('files["/etc/group"].checksum', "changed"),
            ('files["/etc/group"].size', "changed"),
            ('files["/etc/shadow"].checksum', "changed"),
            ('files["/etc/shadow"].size', "changed"),
        },
    }
    web2_items = {
        i["path"]: i for h in drifted["hosts"] if h["host"] == web2 for i in h["items"]
    }
    assert web2_items["users.mallory"]["actual"]["shell"] == "/bin/sh"
    assert web2_items[f"packages.{package}"]["actual"] is None

    # Accept the new user (and its group), revert the config edit.
    accepted = env(
        "baseline",
        "accept",
        web2,
        "--path",
        "users.mallory",
        "--reason",
        "service account for backups",
        check=0,
    )
    assert f"accepted {web2} users.mallory (added)" in accepted.out
    env(
        "baseline",
        "accept",
        web2,
        "--path",
        "groups.mallory",
        "--reason",
        "its group",
        check=0,
    )
    sshd_config.write_bytes(original)

    after = run(env, "scan", check=2)

    assert items_by_host(after)[web2] == {
        (f"packages.{package}", "removed"),
        ('files["/etc/passwd"].checksum', "changed"),
        ('files["/etc/passwd"].size', "changed"),
        ('files["/etc/group"].checksum', "changed"),
        ('files["/etc/group"].size', "changed"),
        ('files["/etc/shadow"].checksum', "changed"),
        ('files["/etc/shadow"].size', "changed"),
    }
    history = run(env, "history", "--host", web2)
    states = {e["path"]: (e["state"], e["seen_count"]) for e in history}
    assert states["users.mallory"] == ("accepted", 1)
    assert states['files["/etc/ssh/sshd_config"].checksum'] == ("resolved", 1)
    assert states[f"packages.{package}"] == ("open", 2)
    accepted_row = next(e for e in history if e["path"] == "users.mallory")
    assert accepted_row["close_note"] == "service account for backups"
    host_file = env.baselines / "hosts" / f"{web2}.yml"
    assert "mallory" in host_file.read_text()

    # An unreachable host keeps its episodes open, unseen.
    fleet.stop_host(web2)
    try:
        down = run(env, "scan", check=3)
    finally:
        fleet.start_host(web2)

    statuses = {h["host"]: h["status"] for h in down["hosts"]}
    assert statuses == {web1: "ok", web2: "unreachable", db1: "ok"}
    message = next(h["message"] for h in down["hosts"] if h["host"] == web2)
    assert message
    still = {e["path"]: e["seen_count"] for e in run(env, "drift", "--host", web2)}
    assert still[f"packages.{package}"] == 2
    assert len(still) == 7


def test_a_host_missing_a_section_is_partial_and_keeps_its_drift(
    fleet: Fleet, env: Driftd
) -> None:
    db1 = fleet.names[2]
    fleet.run(db1, "useradd", "-M", "partialuser")
    run(env, "scan", "--limit", db1, check=2)
    # Without dpkg-query, packages come from package_facts instead and must read
    # the same; without the service tool, services cannot be read at all.
    for tool in ("usr/bin/dpkg-query", "usr/sbin/service"):
        target = fleet.root(db1) / tool
        shutil.move(target, target.with_name(f"{target.name}.moved-away"))

    report = run(env, "scan", "--limit", db1, check=2)

    [host] = report["hosts"]
    assert host["status"] == "partial", host["message"]
    assert "not collected: services" in host["message"]
    assert {i["path"] for i in host["items"]} >= {"users.partialuser"}
    assert not any(i["path"].startswith("packages.") for i in host["items"])
    assert host["resolved"] == 0


def test_text_that_is_not_utf8_is_stored_and_shown(fleet: Fleet, env: Driftd) -> None:
    web1 = fleet.names[0]
    passwd = fleet.root(web1) / "etc/passwd"
    passwd.write_bytes(
        passwd.read_bytes()
        + b"jose:x:4242:4242:Jos\xe9 Garc\xeda:/nonexistent:/bin/sh\n"
    )

    report = run(env, "scan", "--limit", web1, check=2)

    [host] = report["hosts"]
    user = next(i for i in host["items"] if i["path"] == "users.jose")
    assert user["actual"]["gecos"] == "Jos\udce9 Garc\udceda"
    table = env("drift", "--host", web1, check=0)
    assert "users.jose" in table.out
    stored = run(env, "drift", "--host", web1)
    assert any(
        e["actual"] and e["actual"].get("gecos") == "Jos\udce9 Garc\udceda"
        for e in stored
        if e["path"] == "users.jose"
    )


def test_the_probe_sees_each_hosts_sshd_listening(fleet: Fleet, tmp_path: Path) -> None:
    db1 = fleet.names[2]
    driftd = Driftd(
        tmp_path,
        tmp_path / "d.db",
        tmp_path,
        str(fleet.write_inventory(tmp_path / "i")),
    )

    report = json.loads(driftd("scan", "--limit", db1, "--json", check=3).out)

    assert report["hosts"][0]["status"] == "no_baseline"
    row = (
        sqlite3.connect(tmp_path / "d.db")
        .execute("SELECT data FROM snapshots")
        .fetchone()
    )
    ports = json.loads(row[0])["data"]["ports"]
    assert ports[f"tcp 127.0.0.1:{fleet.port(db1)}"] == {
        "address": "127.0.0.1",
        "port": fleet.port(db1),
        "proto": "tcp",
    }
