"""A real scan of this machine over Ansible's local connection."""

from __future__ import annotations

from tests.conftest import ROOT, Driftd


def test_the_shipped_example_baseline_scans_this_machine(driftd: Driftd) -> None:
    driftd.baselines = ROOT / "baselines"

    result = driftd("scan", "--json")

    assert result.code in (0, 2), result.err
    report = result.json()
    [host] = report["hosts"]
    assert host["host"] == "localhost"
    assert host["status"] == "ok", host["message"]
    assert host["baselines"] == ["all.yml"]
    assert report["exit_code"] == result.code


def test_capture_then_scan_is_clean_then_a_pin_finds_drift(driftd: Driftd) -> None:
    driftd("baseline", "capture", "localhost", check=0)
    captured = driftd.baselines / "hosts" / "localhost.yml"
    text = captured.read_text()
    assert "snapshot:" in text and "date_time" not in text

    first = driftd("scan", "--json", check=0).json()
    assert first["hosts"][0]["items"] == []

    (driftd.baselines / "all.yml").write_text(
        "expect:\n  users.root.shell: /bin/nonexistent-shell\n"
    )
    second = driftd("scan", "--json", check=2).json()
    [item] = second["hosts"][0]["items"]
    assert item["path"] == "users.root.shell"
    assert item["kind"] == "changed"
    assert item["expected"] == "/bin/nonexistent-shell"

    drift = driftd("drift", "--json", check=0).json()
    assert [(e["host"], e["path"], e["seen_count"]) for e in drift] == [
        ("localhost", "users.root.shell", 1)
    ]

    versions = driftd("baseline", "list", "--json", check=0).json()
    assert {v["file"] for v in versions} == {"all.yml", "hosts/localhost.yml"}


def test_a_host_with_no_baseline_is_reported_once_without_items(driftd: Driftd) -> None:
    result = driftd("scan", "--json", check=3)

    [host] = result.json()["hosts"]
    assert host["status"] == "no_baseline"
    assert host["items"] == []
    assert driftd("drift", "--json", check=0).json() == []
