"""Baseline versions, git commits, and reading history back from the CLI."""

from __future__ import annotations

import subprocess

from tests.conftest import Driftd


def git(driftd: Driftd, *args: str) -> str:
    done = subprocess.run(
        [
            "git",
            "-C",
            str(driftd.baselines),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_versions_record_content_git_commit_and_read_back(driftd: Driftd) -> None:
    all_yml = driftd.baselines / "all.yml"
    all_yml.write_text("expect:\n  users.root.uid: 0\n")
    git(driftd, "init", "-q")
    git(driftd, "add", "all.yml")
    git(driftd, "commit", "-qm", "first")
    head = git(driftd, "rev-parse", "HEAD")

    first = driftd("scan", "--json", check=0).json()
    all_yml.write_text("expect:\n  users.root.uid: 0\n  users.root.gid: 1\n")
    second = driftd("scan", "--json", check=2).json()
    all_yml.touch()
    driftd("scan", "--json", check=2)

    versions = driftd("baseline", "list", "--json", check=0).json()
    assert [(v["file"], v["version"]) for v in versions] == [
        ("all.yml", 1),
        ("all.yml", 2),
    ]
    assert versions[0]["git_commit"] == head
    assert versions[1]["git_commit"] == f"{head}+dirty"

    old = driftd("baseline", "show", "all.yml", "--version", "1", check=0).out
    assert old == "expect:\n  users.root.uid: 0\n"
    change = driftd("baseline", "diff", "all.yml", "1", "2", check=0).out
    assert "+  users.root.gid: 1" in change

    shown = driftd("show", str(second["scan_id"]), "--json", check=0).json()
    assert shown["status"] == "complete"
    assert [e["path"] for e in shown["episodes"]] == ["users.root.gid"]
    assert (
        driftd("show", str(first["scan_id"]), "--json", check=0).json()["episodes"]
        == []
    )

    recent = driftd(
        "history", "--since", "1h", "--path", "users.**", "--json", check=0
    ).json()
    assert [(e["path"], e["state"], e["seen_count"]) for e in recent] == [
        ("users.root.gid", "open", 2)
    ]
    assert driftd("history", "--since", "2999-01-01", "--json", check=0).json() == []
    assert driftd("history", "--since", "yesterday-ish", check=1).code == 1
    assert driftd("show", "999", check=1).err.startswith("driftd: error: no scan 999")
