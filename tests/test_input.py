"""Bad input: one clear message per problem, naming file, line and key; exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FACTS, Driftd


def test_every_problem_in_a_baseline_is_reported_at_once(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text(
        "description: x\n"
        "expect:\n"
        "  facts.distribution: Debian\n"
        "  nonsense.path: 1\n"
        "  packages.telnetd: {absnt: true}\n"
        "  'files[\"/etc/x\"': 1\n"
        "ignores: []\n"
    )

    result = driftd("check-config", check=1)

    lines = result.err.strip().splitlines()
    assert any(
        "all.yml:4: expect.nonsense.path: unknown section 'nonsense'" in x
        for x in lines
    )
    assert any(
        "all.yml:5: expect.packages.telnetd: a matcher needs" in x for x in lines
    )
    assert any("all.yml:6:" in x for x in lines)
    assert any("all.yml:7: ignores: unknown key" in x for x in lines)
    assert "Traceback" not in result.err


def test_broken_yaml_names_the_line(driftd: Driftd) -> None:
    (driftd.baselines / "all.yml").write_text("expect:\n  a: [1, 2\n  b: 3\n")

    result = driftd("scan", check=1)

    assert "all.yml:" in result.err and "not valid YAML" in result.err
    assert not driftd.db.exists()


def test_a_config_file_with_unknown_keys_and_wrong_types(
    driftd: Driftd, tmp_path: Path
) -> None:
    config = tmp_path / "driftd.yml"
    config.write_text("forks: many\nsections: [facts, nope]\ncolour: blue\n")

    result = driftd("--config", str(config), "check-config", check=1)

    assert f"{config}:1: forks: must be a whole number above 0" in result.err
    assert f"{config}:2: sections: unknown section 'nope'" in result.err
    assert f"{config}:3: colour: unknown key" in result.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ('{"ansible_facts": {"ansible_hostname": "x"', "not valid JSON"),
        ("[1, 2, 3]", "a list of unknown records"),
        ('web1 | UNREACHABLE! => {"unreachable": true}', "UNREACHABLE"),
    ],
)
def test_files_that_are_not_fact_dumps_are_named(
    driftd: Driftd, tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    good = FACTS / "debian-12.5-digitalocean_adhoc-setup.json"

    result = driftd("diff", str(good), str(bad), check=1)

    assert str(bad) in result.err and message in result.err
    assert "Traceback" not in result.err


def test_the_unreachable_record_in_the_shared_facts_is_not_a_dump(
    driftd: Driftd,
) -> None:
    result = driftd(
        "diff",
        str(FACTS / "debian-7.8-openvz_ansible-cmdb.json"),
        str(FACTS / "unreachable-host-result_ansible-cmdb.json"),
        check=1,
    )

    assert "UNREACHABLE host result" in result.err


def test_an_unknown_host_in_limit_is_an_error(driftd: Driftd, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "web1 ansible_host=127.0.0.1\n[db]\ndb1 ansible_host=127.0.0.1\n"
    )
    driftd.inventory = str(inventory)

    result = driftd("scan", "--limit", "web1,nosuchhost", check=1)

    assert "'nosuchhost' matches no host" in result.err


def test_an_empty_inventory_is_an_error(driftd: Driftd, tmp_path: Path) -> None:
    inventory = tmp_path / "empty.ini"
    inventory.write_text("# nothing here\n")
    driftd.inventory = str(inventory)

    result = driftd("scan", check=1)

    assert "has no hosts" in result.err


def test_a_hostname_with_path_separators_stays_inside_baselines(tmp_path: Path) -> None:
    from driftd.baseline import host_file_name

    for host in ("../../etc/passwd", "/etc/shadow", "..", ".", "a/b", "a\\b", "\x00"):
        name = host_file_name(host)
        resolved = (tmp_path / name).resolve()
        assert resolved.parent == (tmp_path / "hosts").resolve(), host


def test_a_newer_database_is_a_clear_error(driftd: Driftd) -> None:
    import sqlite3

    from driftd.store import Store

    Store.open(driftd.db).close()
    connection = sqlite3.connect(driftd.db)
    connection.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()

    result = driftd("drift", check=1)

    assert "newer driftd" in result.err


def test_reading_commands_never_create_a_database(driftd: Driftd) -> None:
    for command in (["drift"], ["history"], ["show", "1"], ["baseline", "list"]):
        result = driftd(*command, check=1)

        assert "no history here yet" in result.err, command
        assert not driftd.db.exists(), command

    driftd.db.parent.mkdir(parents=True)
    driftd.db.touch()
    assert "no history here yet" in driftd("drift", check=1).err
    assert driftd.db.stat().st_size == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"ansible_facts": ' + "[" * 50000 + "]" * 50000 + "}", "nested too deeply"),
        ('{"ansible_facts": ["eth0"]}', "ansible_facts: must be an object of facts"),
    ],
    ids=["deep", "facts-list"],
)
def test_odd_dumps_are_named_errors(
    driftd: Driftd, tmp_path: Path, text: str, message: str
) -> None:
    dump = tmp_path / "odd.json"
    dump.write_text(text)

    result = driftd("diff", str(dump), str(dump), check=1)

    assert f"{dump}: {message}" in result.err
    assert "Traceback" not in result.err


def test_a_schema_version_that_is_not_a_number_is_named(driftd: Driftd) -> None:
    import sqlite3

    from driftd.store import Store

    Store.open(driftd.db).close()
    with sqlite3.connect(driftd.db) as connection:
        connection.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")

    result = driftd("drift", check=1)

    assert "schema_version is 'abc'" in result.err


def test_an_empty_filter_is_refused_not_ignored(driftd: Driftd) -> None:
    from driftd.store import Store

    Store.open(driftd.db).close()
    for command in (
        ["drift", "--host", ""],
        ["history", "--path", " "],
        ["history", "--since", ""],
    ):
        result = driftd(*command, check=1)
        assert "must not be empty" in result.err, command


def test_check_config_warns_of_layers_that_apply_to_nothing(driftd: Driftd) -> None:
    for name in ("web.yml", "extra/foo.yml", "groups/wbe.yml", "hosts/ghost.yml"):
        (driftd.baselines / name).parent.mkdir(exist_ok=True)
        (driftd.baselines / name).write_text("description: somewhere\n")
    (driftd.baselines / "hosts" / "localhost.yml").write_text("description: here\n")

    result = driftd("check-config", check=0)

    warned = [line for line in result.err.splitlines() if "warning" in line]
    assert len(warned) == 4, result.err
    assert f"{driftd.baselines}/web.yml: not a layer" in result.err
    assert f"{driftd.baselines}/extra/foo.yml: not a layer" in result.err
    assert "groups/wbe.yml: no such group in the inventory" in result.err
    assert "hosts/ghost.yml: no such host in the inventory" in result.err
    assert "localhost.yml: no such host" not in result.err
