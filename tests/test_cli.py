"""The command line as people type it: option placement, paths relative to
where they stand, strict YAML, signals, and locks between concurrent commands."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FACTS, ROOT, Driftd, Result

LOCAL_INVENTORY = (
    f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
)


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "driftd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "DRIFTD_CONFIG": "", **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )

    return Result(done.returncode, done.stdout, done.stderr)


def write_config(path: Path, db: str, baselines: Path) -> Path:
    path.write_text(f"db: {db}\nbaselines: {baselines}\n")

    return path


# --- global options -----------------------------------------------------------------


def test_a_typed_global_option_beats_the_environment_wherever_it_stands(
    tmp_path: Path,
) -> None:
    baselines = tmp_path / "b"
    baselines.mkdir()
    typed = write_config(tmp_path / "typed.yml", "typed.db", baselines)
    from_env = write_config(tmp_path / "env.yml", "env.db", baselines)
    env = {"DRIFTD_CONFIG": str(from_env)}

    before = run("--config", str(typed), "check-config", cwd=tmp_path, env=env)
    after = run("check-config", "--config", str(typed), cwd=tmp_path, env=env)
    neither = run("check-config", cwd=tmp_path, env=env)

    assert before.code == after.code == neither.code == 0, before.err + after.err
    assert str(tmp_path / "typed.db") in before.out
    assert str(tmp_path / "typed.db") in after.out
    assert str(tmp_path / "env.db") in neither.out


def test_verbosity_before_the_command_is_kept(tmp_path: Path) -> None:
    baselines = tmp_path / "b"
    baselines.mkdir()
    (tmp_path / "hosts.ini").write_text(LOCAL_INVENTORY)
    argv = ["--baselines", str(baselines), "--db", str(tmp_path / "d.db")]

    quiet = run(*argv, "scan", "-i", "hosts.ini", "--no-daemon", cwd=tmp_path)
    loud = run("-vv", *argv, "scan", "-i", "hosts.ini", "--no-daemon", cwd=tmp_path)

    assert quiet.code == loud.code == 3, quiet.err + loud.err
    assert "scan_started" not in quiet.err
    assert "scan_started" in loud.err


def test_a_relative_inventory_path_is_read_from_where_the_user_stands(
    tmp_path: Path,
) -> None:
    baselines = tmp_path / "b"
    baselines.mkdir()
    (tmp_path / "inventories").mkdir()
    (tmp_path / "inventories" / "local.ini").write_text(LOCAL_INVENTORY)

    result = run(
        "scan",
        "-i",
        "inventories/local.ini",
        "--baselines",
        "b",
        "--db",
        "d.db",
        "--no-daemon",
        "--json",
        cwd=tmp_path,
    )

    assert result.code == 3, result.err
    [host] = result.json()["hosts"]
    assert (host["host"], host["status"]) == ("localhost", "no_baseline")


def test_an_inventory_ansible_cannot_parse_is_one_clear_error(driftd: Driftd) -> None:
    inventory = driftd.home / "broken.ini"
    inventory.write_text("[web\nweb1 ansible_host=127.0.0.1\n")
    driftd.inventory = str(inventory)

    result = driftd("scan", "--no-daemon", check=1)

    assert f"{inventory}: Ansible cannot parse this inventory" in result.err
    assert "[WARNING]" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not driftd.db.exists()


# --- strict YAML --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            b"description: a\nignore: []\ndescription: b\n",
            "all.yml:3: key 'description'",
        ),
        (
            b"ignore: &rules [a]\nexpect:\n  facts.x: *rules\n",
            "aliases are not accepted",
        ),
        (
            b"description: ok\nexpect:\n  facts.x: caf\xe9\n",
            "all.yml:3: not valid UTF-8",
        ),
        (b"snapshot:\n  facts: " + b"[" * 3000 + b"]" * 3000 + b"\n", "all.yml"),
    ],
    ids=["duplicate-key", "alias", "latin-1", "deep"],
)
def test_baseline_yaml_is_read_strictly(
    driftd: Driftd, text: bytes, message: str
) -> None:
    (driftd.baselines / "all.yml").write_bytes(text)

    result = driftd("check-config", check=1)

    assert message in result.err
    assert "Traceback" not in result.err


def test_a_duplicate_key_in_the_config_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "driftd.yml"
    config.write_text("forks: 4\ntimeout: 60\nforks: 8\n")

    result = run("--config", str(config), "check-config", cwd=tmp_path)

    assert result.code == 1
    assert f"{config}:3: key 'forks' given twice (also line 1)" in result.err


def test_yaml_layer_files_apply_like_yml_ones(driftd: Driftd, tmp_path: Path) -> None:
    (driftd.baselines / "groups").mkdir()
    (driftd.baselines / "groups" / "web.yaml").write_text(
        "expect:\n  facts.system: Plan9\n"
    )
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[web]\n" + LOCAL_INVENTORY)
    driftd.inventory = str(inventory)

    result = driftd("scan", "--no-daemon", "--json", check=2)

    [host] = result.json()["hosts"]
    assert [i["path"] for i in host["items"]] == ["facts.system"]
    assert host["baselines"] == ["groups/web.yaml"]

    (driftd.baselines / "groups" / "web.yml").write_text("description: twin\n")
    both = driftd("check-config", check=1)
    assert "groups/web.yaml" in both.err and "keep one" in both.err


def test_baseline_show_reads_nothing_outside_the_baselines(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text("description: shared\n")

    assert driftd("baseline", "show", "all.yml", check=0).out == "description: shared\n"
    for name in ("../../../../etc/passwd", "/etc/passwd", "../state/driftd.db"):
        result = driftd("baseline", "show", name, check=1)
        assert "not a baseline file" in result.err, name
        assert "root:" not in result.out


# --- diff ---------------------------------------------------------------------------


def test_diff_says_what_the_actual_file_did_not_have(
    driftd: Driftd, tmp_path: Path
) -> None:
    from driftd.snapshot import load_dump_text

    dump = FACTS / "ubuntu-18.04-aws_master_t1-2020-01-13.json"
    facts = load_dump_text(dump.read_text(), str(dump)).data["facts"]
    without = {k: v for k, v in facts.items() if k != "mounts"}
    expected, actual = tmp_path / "before.json", tmp_path / "after.json"
    expected.write_text(json.dumps({"ansible_facts": facts}))
    actual.write_text(json.dumps({"ansible_facts": without}))

    result = driftd("diff", str(expected), str(actual), check=3)
    machine = driftd("diff", str(expected), str(actual), "--json", check=3).json()

    assert "no drift" in result.out
    assert "not compared: facts.mounts" in result.out
    assert machine["items"] == []
    assert machine["unobserved"] == ["facts.mounts"]


def test_history_rejects_a_date_beyond_the_calendar(driftd: Driftd) -> None:
    driftd("scan", "--no-daemon", check=3)

    result = driftd("history", "--since", "99999999999d", check=1)

    assert "--since" in result.err
    assert "Traceback" not in result.err


# --- signals and locks --------------------------------------------------------------


def _temp_dirs_of(pid: int) -> list[Path]:
    root = Path(tempfile.gettempdir())
    return [
        p
        for prefix in ("driftd-run-", "driftd-inv-")
        for p in root.glob(f"{prefix}{pid}-*")
    ]


def test_sigterm_cancels_a_cli_scan_and_leaves_nothing_behind(driftd: Driftd) -> None:
    argv = [sys.executable, "-m", "driftd", "scan", "--no-daemon", "--db"]
    argv += [str(driftd.db), "--baselines", str(driftd.baselines)]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DRIFTD_CONFIG": ""},
    )
    deadline = time.monotonic() + 60
    while not _temp_dirs_of(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temp_dirs_of(process.pid), "the scan never started"
    time.sleep(1)

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 1, err
    assert "interrupted" in err
    assert _temp_dirs_of(process.pid) == []
    assert "interrupted" in driftd("history", "--json", check=0).err + str(
        _scan_statuses(driftd.db)
    )


def _scan_statuses(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        return [r[0] for r in connection.execute("SELECT status FROM scans")]


def test_stale_temp_dirs_of_a_dead_driftd_are_swept(tmp_path: Path) -> None:
    from driftd.collect import sweep_temp_dirs

    child = subprocess.Popen(["true"])
    child.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"driftd-run-{child.pid}-"))
    (stale / "env").mkdir()
    alive = Path(tempfile.mkdtemp(prefix=f"driftd-run-{os.getpid()}-"))
    try:
        swept = sweep_temp_dirs()

        assert stale in swept
        assert not stale.exists()
        assert alive.exists()
    finally:
        for path in (stale, alive):
            if path.exists():
                path.rmdir()


def test_concurrent_accepts_keep_both_edits(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text(
        "expect:\n  facts.system: Plan9\n  facts.architecture: pdp11\n"
    )
    scanned = driftd("scan", "--no-daemon", "--json", check=2).json()
    assert len(scanned["hosts"][0]["items"]) == 2

    argv = [sys.executable, "-m", "driftd", "baseline", "accept", "localhost"]
    argv += ["--db", str(driftd.db), "--baselines", str(driftd.baselines)]
    accepts = [
        subprocess.Popen(
            [*argv, "--path", path, "--reason", f"accept {path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DRIFTD_CONFIG": ""},
        )
        for path in ("facts.system", "facts.architecture")
    ]
    for process in accepts:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err

    layer = (driftd.baselines / "hosts" / "localhost.yml").read_text()
    assert "facts.system:" in layer and "facts.architecture:" in layer
    assert driftd("scan", "--no-daemon", "--json", check=0).json()["exit_code"] == 0


# --- the probe's transport of text that is not UTF-8 --------------------------------


def _probe() -> Any:
    path = ROOT / "playbooks" / "library" / "driftd_probe.py"
    spec = importlib.util.spec_from_file_location("driftd_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    return module


def test_probe_text_round_trips_and_forged_marks_are_harmless() -> None:
    from driftd.snapshot import unwrap, unwrap_probe

    probe = _probe()
    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")
    lookalike = "__driftd_bytes__:Y2Fm6Q=="
    texts = [latin1, lookalike, "__driftd_bytes__:not base64!", "plain"]
    carried = probe.transportable({t: t for t in texts})

    assert unwrap_probe(carried) == {t: t for t in texts}
    assert unwrap_probe("__driftd_bytes__:%%%") == "__driftd_bytes__:%%%"
    encoded = "__driftd_bytes__:" + base64.b64encode(b"caf\xe9").decode()
    assert unwrap({"a": encoded}) == {"a": encoded}  # fact dumps are taken as written


# --- packaging ----------------------------------------------------------------------


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]


def test_a_wheel_carries_the_collection_playbook_and_its_module(tmp_path: Path) -> None:
    import zipfile

    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    [wheel] = tmp_path.glob("driftd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    share = [n.split("/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "share/driftd/playbooks/collect.yml" in share
    assert "share/driftd/playbooks/library/driftd_probe.py" in share


def test_not_a_number_compares_equal_to_itself_and_prints_as_json(
    driftd: Driftd, tmp_path: Path
) -> None:
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text('{"ansible_facts": {"ratio": NaN, "peak": Infinity, "os": "a"}}')
    after.write_text('{"ansible_facts": {"ratio": NaN, "peak": 1.5, "os": "a"}}')

    same = driftd("diff", str(before), str(before), check=0)
    changed = driftd("diff", str(before), str(after), "--json", check=2)

    assert "no drift" in same.out

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    document = json.loads(changed.out, parse_constant=refuse)
    assert [(i["path"], i["expected"], i["actual"]) for i in document["items"]] == [
        ("facts.peak", "inf", 1.5)
    ]


def test_drift_hidden_by_a_new_ignore_rule_closes_as_ignored(driftd: Driftd) -> None:
    driftd("baseline", "capture", "localhost", check=0)
    layer = driftd.baselines / "hosts" / "localhost.yml"
    captured = layer.read_text()
    assert "    system: Linux\n" in captured
    layer.write_text(captured.replace("    system: Linux\n", "    system: Plan9\n"))
    driftd("scan", "--no-daemon", check=2)
    (driftd.baselines / "all.yml").write_text("ignore: [facts.system]\n")

    driftd("scan", "--no-daemon", check=0)

    [episode] = driftd("history", "--json", check=0).json()
    assert (episode["path"], episode["state"]) == ("facts.system", "ignored")
