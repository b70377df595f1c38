"""Comparison: exactly the real differences, each at its own path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from driftd.baseline import DEFAULT_IGNORE, Expected, merge_layers, parse_layer
from driftd.compare import compare
from driftd.snapshot import Snapshot, normalise_services, snapshot_from_facts


def facts(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ansible_distribution": "Debian",
        "ansible_interfaces": ["lo", "eth0"],
        "ansible_eth0": {"device": "eth0", "mtu": 1500, "active": True},
        "ansible_lo": {"device": "lo", "mtu": 65536, "active": True},
        "ansible_mounts": [
            {
                "mount": "/",
                "device": "/dev/vda1",
                "options": "rw,relatime",
                "size_available": 1000,
                "uuid": "abc",
            },
            {
                "mount": "/boot",
                "device": "/dev/vda2",
                "options": "rw",
                "size_available": 50,
                "uuid": "N/A",
            },
        ],
        "ansible_dns": {"nameservers": ["10.0.0.1", "10.0.0.1", "10.0.0.2"]},
        "ansible_date_time": {"epoch": "1"},
    }
    base.update(extra)
    return base


def expect(snapshot: Snapshot, ignore: tuple[str, ...] = DEFAULT_IGNORE) -> Expected:
    return Expected(copy.deepcopy(snapshot.data), [], ignore, [])


def items(expected: Expected, actual: Snapshot) -> list[tuple[str, str, Any, Any]]:
    return [
        (i.path_text, i.kind, i.expected, i.actual)
        for i in compare(expected, actual).items
    ]


def test_reordered_lists_and_records_are_not_drift() -> None:
    before = snapshot_from_facts(facts())
    shuffled = facts(
        ansible_interfaces=["eth0", "lo"],
        ansible_mounts=list(reversed(facts()["ansible_mounts"])),
        ansible_dns={"nameservers": ["10.0.0.2", "10.0.0.1", "10.0.0.1"]},
    )

    assert items(expect(before), snapshot_from_facts(shuffled)) == []


def test_a_lost_duplicate_is_drift() -> None:
    before = snapshot_from_facts(facts())
    after = snapshot_from_facts(
        facts(ansible_dns={"nameservers": ["10.0.0.1", "10.0.0.2"]})
    )

    assert items(expect(before), after) == [
        (
            "facts.dns.nameservers",
            "changed",
            ["10.0.0.1", "10.0.0.1", "10.0.0.2"],
            ["10.0.0.1", "10.0.0.2"],
        )
    ]


def test_mount_records_pair_by_mount_point_not_position() -> None:
    before = snapshot_from_facts(facts())
    mounts = [
        {
            "mount": "/",
            "device": "/dev/vda1",
            "options": "rw,relatime,noexec",
            "size_available": 7,
            "uuid": "abc",
        },
    ]
    after = snapshot_from_facts(facts(ansible_mounts=mounts))

    assert items(expect(before), after) == [
        ('facts.mounts["/"].options', "changed", "rw,relatime", "rw,relatime,noexec"),
        (
            'facts.mounts["/boot"]',
            "removed",
            {"device": "/dev/vda2", "mount": "/boot", "options": "rw"},
            None,
        ),
    ]


def test_many_replaced_keys_under_ignore_leave_one_item_at_its_own_path() -> None:
    veths = {
        f"ansible_veth{i:04x}": {"device": f"veth{i:04x}", "mtu": 1500}
        for i in range(30)
    }
    names = ["lo", "eth0", *(v["device"] for v in veths.values())]
    before = snapshot_from_facts(facts(ansible_interfaces=names, **veths))
    new_veths = {
        f"ansible_vethb{i:03x}": {"device": f"vethb{i:03x}", "mtu": 1500}
        for i in range(30)
    }
    new_names = ["lo", "eth0", *(v["device"] for v in new_veths.values())]
    rules = (*DEFAULT_IGNORE, "facts.interfaces.veth*")

    unchanged = snapshot_from_facts(facts(ansible_interfaces=new_names, **new_veths))
    assert items(expect(before, rules), unchanged) == []

    mtu = facts(ansible_interfaces=new_names, **new_veths)
    mtu["ansible_eth0"] = {"device": "eth0", "mtu": 9000, "active": True}
    assert items(expect(before, rules), snapshot_from_facts(mtu)) == [
        ("facts.interfaces.eth0.mtu", "changed", 1500, 9000)
    ]


@pytest.mark.parametrize(("old", "new"), [("22", 22), (True, 1), (1, "1"), (False, 0)])
def test_type_only_changes_are_reported_the_same_wherever_they_sit(
    old: Any, new: Any
) -> None:
    before = snapshot_from_facts(
        facts(ansible_listen_port=old, ansible_list=[old, "x"])
    )
    after = snapshot_from_facts(facts(ansible_listen_port=new, ansible_list=[new, "x"]))

    kinds = {(p, k) for p, k, _, _ in items(expect(before), after)}

    assert kinds == {
        ("facts.listen_port", "type_changed"),
        ("facts.list", "type_changed"),
    }


def test_integral_floats_are_the_same_number() -> None:
    before = snapshot_from_facts(facts(ansible_memtotal_mb=4096))
    after = snapshot_from_facts(facts(ansible_memtotal_mb=4096.0))

    assert items(expect(before), after) == []


def test_volatile_values_inside_records_never_make_the_record_look_replaced() -> None:
    before = snapshot_from_facts(facts())
    changed = facts()
    for mount in changed["ansible_mounts"]:
        mount["size_available"] += 12345
    changed["ansible_date_time"] = {"epoch": "99"}

    assert items(expect(before), snapshot_from_facts(changed)) == []


def test_placeholders_are_unknown_not_removed_nor_added() -> None:
    before = snapshot_from_facts(facts())
    mounts = copy.deepcopy(facts()["ansible_mounts"])
    mounts[0]["uuid"] = "N/A"
    after = snapshot_from_facts(facts(ansible_mounts=mounts))

    assert items(expect(before), after) == []
    assert after.is_unknown(("facts", "mounts", "/", "uuid"))


def test_a_section_that_was_not_gathered_gives_no_items() -> None:
    before = snapshot_from_facts(facts(), packages={"bash": [{"version": "5.2"}]})
    after = snapshot_from_facts(facts())

    assert items(expect(before), after) == []
    assert after.is_unknown(("packages", "bash"))


def test_unknown_service_states_are_neither_drift_nor_resolution() -> None:
    unknown: set[Any] = set()
    known = normalise_services(
        {
            "cron.service": {
                "name": "cron.service",
                "state": "running",
                "status": "enabled",
            }
        },
        unknown,
    )
    later = Snapshot(
        {
            "services": normalise_services(
                {
                    "cron.service": {
                        "name": "cron.service",
                        "state": "unknown",
                        "status": "enabled",
                    }
                },
                unknown,
            )
        },
        unknown,
    )

    assert items(Expected({"services": known}, [], (), []), later) == []
    assert later.is_unknown(("services", "cron.service", "state"))


def test_one_new_kernel_version_is_one_item() -> None:
    kernel = [{"version": "5.14.0", "release": "70.el9", "arch": "x86_64"}]
    newer = [*kernel, {"version": "5.14.0", "release": "162.el9", "arch": "x86_64"}]
    before = snapshot_from_facts(None, packages={"kernel": kernel})
    after = snapshot_from_facts(None, packages={"kernel": list(reversed(newer))})

    assert items(expect(before), after) == [
        (
            "packages.kernel",
            "changed",
            ["5.14.0-70.el9"],
            ["5.14.0-162.el9", "5.14.0-70.el9"],
        )
    ]


def layer(text: str) -> Expected:
    return merge_layers([parse_layer("all.yml", text)], DEFAULT_IGNORE)


def test_pins_check_values_with_matchers() -> None:
    actual = snapshot_from_facts(
        facts(ansible_kernel="6.1.0-18-amd64"),
        packages={
            "openssh-server": [{"version": "1:9.2p1-2+deb12u2"}],
            "telnetd": [{"version": "1"}],
        },
    )
    expected = layer(
        """
expect:
  facts.distribution: {one_of: [Debian, Ubuntu]}
  facts.kernel: {regex: "6\\\\.1\\\\..*"}
  packages.openssh-server: {version: ">=1:9.2, <1:10"}
  packages.telnetd: {absent: true}
  packages.auditd: {present: true}
  facts.interfaces.eth0.mtu: 9000
"""
    )

    assert items(expected, actual) == [
        ("facts.interfaces.eth0.mtu", "changed", 9000, 1500),
        ("packages.auditd", "removed", {"present": True}, None),
        ("packages.telnetd", "added", None, ["1"]),
    ]


def test_a_pin_overrides_the_snapshot_at_its_path() -> None:
    actual = Snapshot({"facts": {"distribution": "Ubuntu"}})
    expected = merge_layers(
        [
            parse_layer("all.yml", "snapshot:\n  facts:\n    distribution: Debian\n"),
            parse_layer(
                "hosts/h.yml",
                "expect:\n  facts.distribution: {one_of: [Debian, Ubuntu]}\n",
            ),
        ],
        DEFAULT_IGNORE,
    )

    assert items(expected, actual) == []


def test_explain_counts_what_each_rule_hid() -> None:
    before = snapshot_from_facts(facts())
    changed = facts(ansible_date_time={"epoch": "2", "hour": "3"})

    hidden = compare(expect(before), snapshot_from_facts(changed), explain=True).hidden

    assert hidden["facts.date_time"] == 2
    assert hidden["facts.env"] == 0
