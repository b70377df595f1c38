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
    recent = Path(tempfile.mkdtemp(prefix=f"driftd-run-{child.pid}-"))
    alive = Path(tempfile.mkdtemp(prefix=f"driftd-run-{os.getpid()}-"))
    long_ago = time.time() - 7 * 3600
    for path in (stale, alive):
        os.utime(path, (long_ago, long_ago))
    try:
        swept = sweep_temp_dirs()

        assert stale in swept
        assert not stale.exists()
        assert recent.exists()  # it could be a live scan in another PID namespace
        assert alive.exists()
    finally:
        for path in (stale, recent, alive):
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


# --- found by attacking it -----------------------------------------------------------


def test_accepting_a_removal_from_a_shared_layer_sticks(driftd: Driftd) -> None:
    driftd("baseline", "capture", "localhost", check=0)
    (driftd.baselines / "all.yml").write_text(
        'snapshot:\n  packages:\n    driftd-fake-package: ["1.0"]\n'
    )
    items = driftd("scan", "--no-daemon", "--json", check=2).json()["hosts"][0]["items"]
    assert [(i["path"], i["kind"]) for i in items] == [
        ("packages.driftd-fake-package", "removed")
    ]

    driftd("baseline", "accept", "localhost", "--reason", "retired", check=0)

    assert (
        "packages.driftd-fake-package:\n    absent: true"
        in (driftd.baselines / "hosts" / "localhost.yml").read_text()
    )
    driftd("scan", "--no-daemon", check=0)
    [episode] = driftd("history", "--json", check=0).json()
    assert episode["state"] == "accepted"


def test_a_relative_config_path_reads_paths_beside_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "b").mkdir()
    (tmp_path / "etc" / "local.ini").write_text(LOCAL_INVENTORY)
    (tmp_path / "etc" / "driftd.yml").write_text(
        "inventory: local.ini\ndb: state/d.db\nbaselines: b\n"
    )

    result = run("--config", "etc/driftd.yml", "scan", "--no-daemon", cwd=tmp_path)

    assert result.code == 3, result.out + result.err
    assert "no_baseline" in result.out
    assert (tmp_path / "etc" / "state" / "d.db").exists()


@pytest.mark.parametrize(
    "limit", ["web[0:1]", "web[0:1],localhost", "web[-1]"], ids=["slice", "and", "last"]
)
def test_ansible_limit_patterns_work_as_in_ansible(
    driftd: Driftd, tmp_path: Path, limit: str
) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        LOCAL_INVENTORY
        + "[web]\n"
        + "".join(f"w{n} ansible_host=127.0.0.1 ansible_port=1\n" for n in (1, 2, 3))
    )
    driftd.inventory = str(inventory)
    wanted = {
        "web[0:1]": {"w1", "w2"},
        "web[0:1],localhost": {"w1", "w2", "localhost"},
        "web[-1]": {"w3"},
    }[limit]

    hosts = driftd("scan", "--no-daemon", "--limit", limit, "--json", check=3).json()

    assert {h["host"] for h in hosts["hosts"]} == wanted


@pytest.mark.parametrize("limit", ["~(", "web[9]", "&", ""])
def test_a_limit_ansible_cannot_read_is_a_message(driftd: Driftd, limit: str) -> None:
    result = driftd("scan", "--no-daemon", "--limit", limit, check=1)

    assert "--limit" in result.err
    assert "Traceback" not in result.err


def test_a_scan_waiting_for_the_lock_can_be_cancelled(driftd: Driftd) -> None:
    import fcntl

    driftd.db.parent.mkdir(parents=True)
    lock = driftd.db.with_name(driftd.db.name + ".scan.lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        argv = [sys.executable, "-m", "driftd", "scan", "--no-daemon", "--db"]
        argv += [str(driftd.db), "--baselines", str(driftd.baselines)]
        process = subprocess.Popen(
            [*argv, "-v"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DRIFTD_CONFIG": ""},
        )
        assert process.stderr is not None
        for line in process.stderr:
            if "waiting_for_scan_lock" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        lock.close()

    assert process.returncode == 1
    assert "cancelled while waiting" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sections: []\n", "sections: must name at least one section"),
        ("task_timeout: 100000000000000000000\n", "task_timeout: must be at most"),
        ("forks: 5000\n", "forks: must be at most 1000"),
        (f"socket: /tmp/{'s' * 120}.sock\n", "socket: a socket path is at most 107"),
    ],
    ids=["no-sections", "huge-timeout", "forks", "long-socket"],
)
def test_config_values_that_cannot_work_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "driftd.yml"
    config.write_text(text)

    result = run("--config", str(config), "check-config", cwd=tmp_path)

    assert result.code == 1
    assert message in result.err


@pytest.mark.parametrize(
    ("layer", "dump", "code"),
    [
        # Choices are normalised like the facts: a list is a multiset, 1.0 is 1.
        ("facts.x: {one_of: [[b, a]]}\n  facts.y: {one_of: [1.0]}", "x_y", 0),
        # YAML dates are the text they were written as, as facts hold them.
        ("facts.bios_date: 2024-01-01", "bios", 0),
        ("facts.bios_date: 2024-01-02", "bios", 2),
        # Epochs of other digits are no crash.
        ('packages.foo: {version: ">=\u00b2:1.0"}', "foo", 0),
    ],
    ids=["one-of", "date", "other-date", "odd-epoch"],
)
def test_pins_read_as_people_write_them(
    driftd: Driftd, tmp_path: Path, layer: str, dump: str, code: int
) -> None:
    facts = {
        "x_y": {"ansible_x": ["a", "b"], "ansible_y": 1},
        "bios": {"ansible_bios_date": "2024-01-01"},
        "foo": {"ansible_system": "Linux", "packages": {"foo": [{"version": "1.0"}]}},
    }[dump]
    baseline = tmp_path / "pins.yml"
    baseline.write_text(f"expect:\n  {layer}\n", encoding="utf-8")
    actual = tmp_path / "actual.json"
    actual.write_text(json.dumps({"ansible_facts": facts}))

    result = driftd("diff", str(baseline), str(actual), check=code)

    assert "Traceback" not in result.err


def test_a_pin_written_twice_in_two_spellings_is_named(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text(
        "expect:\n  facts.y: 1\n  'facts[\"y\"]': 2\n"
    )

    result = driftd("check-config", check=1)

    assert "all.yml:3: expect.facts[\"y\"]: the same path as 'facts.y'" in result.err


def test_one_line_json_with_bars_and_arrows_is_json(
    driftd: Driftd, tmp_path: Path
) -> None:
    dump = tmp_path / "one-line.json"
    dump.write_text(
        '{"ansible_facts": {"ansible_cmdline": {"x": "a|b"}, "ansible_env": '
        '{"PS1": "=> "}}}'
    )

    driftd("diff", str(dump), str(dump), check=0)


@pytest.mark.parametrize(
    "text",
    [
        '{"data": 1, "unknown": []}',
        '{"data": {}, "unknown": 1}',
        '{"data": {"facts": {"a": 1}}, "unknown": [5]}',
    ],
)
def test_a_malformed_stored_snapshot_is_named(
    driftd: Driftd, tmp_path: Path, text: str
) -> None:
    dump = tmp_path / "snapshot.json"
    dump.write_text(text)

    result = driftd("diff", str(dump), str(dump), check=1)

    assert f"{dump}: a driftd snapshot holds data" in result.err


def test_globs_with_many_stars_match_without_backtracking() -> None:
    from driftd.paths import compile_glob

    glob = compile_glob("facts.*a*a*a*a*a*a*a*a*a*a*a*a*a*b")

    assert not glob.matches(("facts", "a" * 200))
    assert glob.matches(("facts", "a" * 200 + "b"))
    assert compile_glob("facts.a?c*").matches(("facts", "abcdef"))
    assert not compile_glob("facts.a?c").matches(("facts", "ac"))


def test_a_dropped_file_stays_open_not_resolved(driftd: Driftd, tmp_path: Path) -> None:
    watched = tmp_path / "watched.conf"
    watched.write_text("one\n")
    config = tmp_path / "driftd.yml"
    config.write_text(f"files: [{watched}]\n")
    driftd.config = str(config)
    driftd("baseline", "capture", "localhost", check=0)
    layer = driftd.baselines / "hosts" / "localhost.yml"
    layer.write_text(layer.read_text().replace(str(watched), str(tmp_path / "gone")))
    driftd("scan", "--no-daemon", check=2)  # watched.conf added, gone removed
    config.write_text("files: []\n")
    layer.write_text(layer.read_text().replace(str(tmp_path / "gone"), "/etc/hostname"))

    driftd("scan", "--no-daemon", check=None)

    states = {e["path"]: e["state"] for e in driftd("history", "--json").json()}
    assert states[f'files["{watched}"]'] == "open"


# --- found by the second attack ------------------------------------------------------


def _watching(driftd: Driftd, tmp_path: Path) -> Path:
    watched = tmp_path / "watched.conf"
    watched.write_text("PermitRootLogin no\n")
    watched.chmod(0o644)
    config = tmp_path / "driftd.yml"
    config.write_text(f"files: [{watched}]\n")
    driftd.config = str(config)

    return watched


def test_a_shared_presence_pin_hides_nothing_below_it(
    driftd: Driftd, tmp_path: Path
) -> None:
    watched = _watching(driftd, tmp_path)
    (driftd.baselines / "all.yml").write_text(
        f"expect:\n  'files[\"{watched}\"]': {{present: true}}\n"
    )
    driftd("baseline", "capture", "localhost", check=0)
    driftd("scan", "--no-daemon", check=0)

    watched.write_text("PermitRootLogin yes\n")
    watched.chmod(0o666)
    result = driftd("scan", "--no-daemon", "--json", check=2).json()

    paths = {i["path"] for i in result["hosts"][0]["items"]}
    assert {f'files["{watched}"].checksum', f'files["{watched}"].mode'} <= paths


def test_a_new_value_at_a_drifted_path_is_a_new_episode(
    driftd: Driftd, tmp_path: Path
) -> None:
    watched = _watching(driftd, tmp_path)
    driftd("baseline", "capture", "localhost", check=0)
    mode = f'files["{watched}"].mode'
    for bits in (0o600, 0o700):
        watched.chmod(bits)
        driftd("scan", "--no-daemon", check=2)

    episodes = [e for e in driftd("history", "--json").json() if e["path"] == mode]

    assert sorted((e["actual"], e["state"]) for e in episodes) == [
        ("0600", "replaced"),
        ("0700", "open"),
    ]


def test_capturing_over_open_drift_accepts_it(driftd: Driftd) -> None:
    driftd("baseline", "capture", "localhost", check=0)
    layer = driftd.baselines / "hosts" / "localhost.yml"
    layer.write_text(
        layer.read_text().replace("    system: Linux\n", "    system: X\n")
    )
    driftd("scan", "--no-daemon", check=2)

    driftd("baseline", "capture", "localhost", check=0)

    [episode] = driftd("history", "--json").json()
    assert (episode["state"], episode["close_note"]) == (
        "accepted",
        "baseline captured",
    )
    driftd("scan", "--no-daemon", check=0)


@pytest.mark.parametrize(
    ("pin", "message"),
    [
        ('{regex: "a{99999999999}"}', "bad regex"),
        ('{version: "<<2"}', "not a version constraint"),
    ],
)
def test_matchers_that_cannot_work_are_named(
    driftd: Driftd, pin: str, message: str
) -> None:
    (driftd.baselines / "all.yml").write_text(f"expect:\n  facts.x: {pin}\n")

    result = driftd("check-config", check=1)

    assert f"all.yml:2: expect.facts.x: {message}" in result.err
    assert "Traceback" not in result.err


def test_a_dump_with_a_byte_order_mark_is_read(driftd: Driftd, tmp_path: Path) -> None:
    dump = tmp_path / "bom.json"
    dump.write_text('\ufeff{"ansible_facts": {"ansible_system": "Linux"}}')

    driftd("diff", str(dump), str(dump), check=0)


FAKE = "packages.driftd-fake-package"


def test_a_capture_holds_against_shared_snapshots_it_lacks(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text(
        'snapshot:\n  packages:\n    driftd-fake-package: ["1.0"]\n'
    )

    driftd("baseline", "capture", "localhost", check=0)

    layer = (driftd.baselines / "hosts" / "localhost.yml").read_text()
    assert f"{FAKE}:\n    absent: true" in layer
    driftd("scan", "--no-daemon", check=0)


def test_accepting_a_removal_held_by_both_layers_sticks(driftd: Driftd) -> None:
    driftd("baseline", "capture", "localhost", check=0)
    fake = '    driftd-fake-package:\n    - "1.0"\n'
    (driftd.baselines / "all.yml").write_text(f"snapshot:\n  packages:\n{fake}")
    layer = driftd.baselines / "hosts" / "localhost.yml"
    layer.write_text(layer.read_text().replace("  packages:\n", f"  packages:\n{fake}"))
    driftd("scan", "--no-daemon", check=2)

    driftd("baseline", "accept", "localhost", "--reason", "gone", check=0)

    assert "driftd-fake-package:\n    -" not in layer.read_text()
    assert f"{FAKE}:\n    absent: true" in layer.read_text()
    driftd("scan", "--no-daemon", check=0)
