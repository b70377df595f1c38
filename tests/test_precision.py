"""Precision on real fact data: no false alarms, no missed change."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftd.baseline import DEFAULT_IGNORE, Expected
from driftd.collect import HostOutcome
from driftd.compare import DriftItem, compare, prune, strict_equal
from driftd.paths import GlobSet, format_path
from driftd.paths import Path as DPath
from driftd.scan import evaluate
from driftd.snapshot import (
    Snapshot,
    _facts_from_document,
    load_dump_text,
    normalise_packages,
    normalise_services,
    snapshot_from_facts,
    unwrap,
)
from driftd.store import HostRecord, Store
from tests.conftest import FACTS, Driftd, fact_files

DUMPS = [p for p in fact_files() if "legacy-scan" not in p.name]


def raw_parts(path: Path) -> tuple[dict[str, Any], Any, Any]:
    facts, packages, services = _facts_from_document(
        json.loads(path.read_text()), path.name
    )
    return unwrap(facts or {}), packages, services


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.stem)
def test_every_envelope_of_every_dump_reads_the_same(path: Path) -> None:
    facts, _, _ = raw_parts(path)
    prefixed = {
        k if k.startswith("ansible_") else f"ansible_{k}": v for k, v in facts.items()
    }
    shapes = {
        "tree": json.dumps({"ansible_facts": prefixed, "changed": False}),
        "adhoc": "host1 | SUCCESS => "
        + json.dumps({"ansible_facts": prefixed}, indent=4),
        "bare": json.dumps(prefixed),
        "unprefixed": json.dumps(
            {k.removeprefix("ansible_"): v for k, v in prefixed.items()}
        ),
        "foreman": json.dumps(
            {"_type": "ansible", "_timestamp": "1", "ansible_facts": prefixed}
        ),
        "hostvars": json.dumps(
            {"hostvars['h']": {"inventory_hostname": "h", **prefixed}}
        ),
        "unsafe": json.dumps({"ansible_facts": wrap_unsafe(prefixed)}),
    }
    reference = snapshot_from_facts(prefixed)
    expected = Expected(reference.data, [], DEFAULT_IGNORE, [])

    for name, text in shapes.items():
        assert compare(expected, load_dump_text(text, name)).items == [], name


def wrap_unsafe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: wrap_unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wrap_unsafe(v) for v in value]
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    return value


def test_legacy_awx_package_and_service_lists_read_as_modern_ones() -> None:
    legacy_packages = json.loads(
        (FACTS / "centos-7.0-packages-legacy-scan_awx.json").read_text()
    )
    modern_packages: dict[str, list[dict[str, Any]]] = {}
    for record in legacy_packages:
        modern_packages.setdefault(record["name"], []).append(dict(record))
    assert normalise_packages(legacy_packages) == normalise_packages(modern_packages)
    assert normalise_packages(legacy_packages)["postfix"] == ["2:2.10.1-6.el7"]

    legacy_services = json.loads(
        (FACTS / "centos-7.0-services-legacy-scan_awx.json").read_text()
    )
    modern_services = {s["name"]: dict(s) for s in legacy_services}
    assert normalise_services(legacy_services, set()) == normalise_services(
        modern_services, set()
    )


# --- random mutations -----------------------------------------------------------------

RULES = GlobSet.of(DEFAULT_IGNORE)
SCALARS = st.one_of(
    st.integers(-5, 10**6),
    st.text(max_size=8).filter(lambda t: t not in ("N/A", "NA")),
    st.booleans(),
    st.none(),
)


def places(tree: Any, path: DPath = ()) -> list[DPath]:
    """Every key path in a normalised tree that no default ignore rule covers."""
    found: list[DPath] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            child = (*path, key)
            if RULES.first_match(child) is None:
                if len(child) > 1:  # a whole section missing is "not collected"
                    found.append(child)
                found += places(value, child)
    return found


def get(tree: Any, path: DPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def visible(value: Any, where: DPath) -> Any:
    """What an item shows of a value: the parts ignore rules cover are left out
    (a replaced ``facts.devices`` shows no ``dm-*`` links)."""
    return prune(value, RULES, where)[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), path=st.sampled_from(DUMPS))
def test_one_random_mutation_gives_exactly_its_item(
    data: st.DataObject, path: Path
) -> None:
    snapshot = load_dump_text(path.read_text(), path.name)
    mutated = copy.deepcopy(snapshot.data)
    where = data.draw(st.sampled_from(places(mutated)))
    parent = get(mutated, where[:-1])
    old = parent[where[-1]]
    action = data.draw(st.sampled_from(["change", "remove", "add"]))

    if action == "add" or (
        action == "remove" and len(where) == 2 and where[0] == "facts"
    ):
        key = data.draw(
            st.text(min_size=1, max_size=6).filter(lambda k: k not in parent)
        )
        target = get(mutated, where[:-1]) if not isinstance(old, dict) else old
        target_path = where[:-1] if not isinstance(old, dict) else where
        key = key if key not in target else key + "_new"
        value = data.draw(SCALARS)
        if RULES.first_match((*target_path, key)) is not None:
            return
        target[key] = value
        wanted = DriftItem((*target_path, key), "added", None, value)
    elif action == "remove":
        del parent[where[-1]]
        wanted = DriftItem(where, "removed", visible(old, where), None)
    else:
        new = data.draw(SCALARS.filter(lambda v: not strict_equal(v, old)))
        if isinstance(old, list):
            new = sorted(
                [*old[:-1], new] if old else [new],
                key=lambda v: (type(v).__name__, json.dumps(v)),
            )
            if strict_equal(new, old):
                return
        parent[where[-1]] = new
        kind = "changed" if type(old) is type(new) else "type_changed"
        if isinstance(old, list) and isinstance(new, list):
            loose = sorted(map(str, old)) == sorted(map(str, new))
            kind = "type_changed" if loose and old != new else "changed"
        wanted = DriftItem(where, kind, visible(old, where), new)

    actual = Snapshot(mutated, set(snapshot.unknown))
    expected = Expected(snapshot.data, [], DEFAULT_IGNORE, [])

    assert compare(expected, actual).items == [wanted], format_path(wanted.path)


# --- the drift pairs ------------------------------------------------------------------


def diff_paths(driftd: Driftd, before: str, after: str) -> dict[str, str]:
    [a] = [p for p in fact_files() if p.name.startswith(before)]
    [b] = [p for p in fact_files() if p.name.startswith(after)]
    result = driftd("diff", str(a), str(b), "--json")
    assert result.code in (0, 2), result.err
    return {i["path"]: i["kind"] for i in result.json()["items"]}


def test_the_ubuntu_host_three_days_apart_did_not_drift(driftd: Driftd) -> None:
    """Only snap loop devices were renumbered at boot, and volatile facts moved."""
    assert (
        diff_paths(driftd, "ubuntu-18.04-aws_master_t1", "ubuntu-18.04-aws_master_t2")
        == {}
    )


def test_the_rhel_laptop_as_user_then_root(driftd: Driftd) -> None:
    found = diff_paths(driftd, "rhel-9.0-laptop_t1", "rhel-9.0-laptop_t4")

    assert found == {
        # Booted from the other disk: the GRUB device of the kernel image changed.
        "facts.cmdline.BOOT_IMAGE": "changed",
        "facts.proc_cmdline.BOOT_IMAGE": "changed",
        # Gathered with become: the user identity Ansible ran as is root now.
        "facts.effective_user_id": "changed",
        "facts.effective_group_id": "changed",
        "facts.real_user_id": "changed",
        "facts.real_group_id": "changed",
        "facts.user_id": "changed",
        "facts.user_uid": "changed",
        "facts.user_gid": "changed",
        "facts.user_gecos": "changed",
        "facts.user_dir": "changed",
        "facts.system_capabilities": "changed",
        "facts.system_capabilities_enforced": "changed",
        # Only root can read these.
        "facts.devices.nvme0n1.serial": "added",
        "facts.lvm": "added",
        # NetworkManager randomised the Wi-Fi MAC address.
        "facts.interfaces.wlp0s20f3.macaddress": "changed",
    }


def test_the_fedora_laptop_a_month_later(driftd: Driftd) -> None:
    found = diff_paths(driftd, "fedora-37-laptop_t1", "fedora-37-laptop_t2")

    assert found == {
        # Docker and Tailscale were installed, the VPN tunnel is gone.
        "facts.interfaces.docker0": "added",
        "facts.interfaces.br-2dde0d2656b7": "added",
        "facts.interfaces.veth6fdd9e4": "added",
        "facts.interfaces.tailscale0": "added",
        "facts.interfaces.tun0": "removed",
        "facts.all_ipv4_addresses": "changed",
        "facts.all_ipv6_addresses": "changed",
        # The default route moved from the tunnel to Wi-Fi; the resolver with it.
        "facts.default_ipv4.address": "changed",
        "facts.default_ipv4.alias": "changed",
        "facts.default_ipv4.broadcast": "changed",
        "facts.default_ipv4.gateway": "changed",
        "facts.default_ipv4.interface": "changed",
        "facts.default_ipv4.macaddress": "changed",
        "facts.default_ipv4.mtu": "changed",
        "facts.default_ipv4.network": "changed",
        "facts.default_ipv4.type": "changed",
        "facts.default_ipv6.address": "removed",
        "facts.default_ipv6.interface": "removed",
        "facts.default_ipv6.macaddress": "removed",
        "facts.default_ipv6.mtu": "removed",
        "facts.default_ipv6.prefix": "removed",
        "facts.default_ipv6.scope": "removed",
        "facts.default_ipv6.type": "removed",
        "facts.dns.nameservers": "changed",
        # A new overlay mount for a container tool.
        'facts.mounts["/tmp/symlinkify/.merged"]': "added",
        # Homebrew's Python now runs Ansible, and the login shell is zsh.
        "facts.python.executable": "changed",
        "facts.python.version.micro": "changed",
        "facts.python.version_info": "changed",
        "facts.python_version": "changed",
        "facts.user_shell": "changed",
    }


# --- unknown is not removed -----------------------------------------------------------


def record(
    store: Store, outcome: HostOutcome, expected: Expected
) -> tuple[str, int, int]:
    status, comparison, _ = evaluate(outcome, expected)
    assert comparison is not None
    scan_id = store.begin_scan("test", "all")
    assert outcome.snapshot is not None
    change = store.record_host(
        scan_id,
        HostRecord(
            outcome.host,
            status,
            comparison.items,
            is_unknown=outcome.snapshot.is_unknown,
        ),
    )
    store.finish_scan(scan_id, "complete")
    return status, change.opened, change.closed


@pytest.mark.parametrize(
    "lose",
    [
        pytest.param(
            lambda f: f.pop("ansible_mounts"), id="gather-timeout-drops-mounts"
        ),
        pytest.param(
            lambda f: f["ansible_mounts"][0].update(uuid="N/A"), id="uuid-placeholder"
        ),
        pytest.param(
            lambda f: f.update(ansible_product_uuid="NA"), id="dmi-placeholder"
        ),
    ],
)
def test_what_was_not_gathered_never_resolves_nor_adds(
    tmp_path: Path, lose: Any
) -> None:
    source = next(p for p in DUMPS if p.name.startswith("debian-12.5"))
    facts = json.loads(source.read_text())["ansible_facts"]
    baseline = snapshot_from_facts(facts)
    expected = Expected(baseline.data, [], DEFAULT_IGNORE, [])
    drifted = copy.deepcopy(facts)
    drifted["ansible_mounts"][0]["uuid"] = "changed-uuid"
    drifted["ansible_product_uuid"] = "changed-too"
    store = Store.open(tmp_path / "h.db")

    status, opened, _ = record(
        store, HostOutcome("h", "ok", snapshot_from_facts(drifted)), expected
    )
    assert (status, opened) == ("ok", 2)

    lost = copy.deepcopy(drifted)
    lose(lost)
    status, opened, closed = record(
        store, HostOutcome("h", "ok", snapshot_from_facts(lost)), expected
    )

    assert status == "partial"
    assert (opened, closed) == (0, 0)
    assert len(store.open_episodes("h")) == 2


def test_an_empty_module_result_is_not_a_removal() -> None:
    before = snapshot_from_facts(
        None,
        packages={"bash": [{"version": "5.2"}]},
        services={"cron.service": {"name": "cron.service", "state": "running"}},
    )
    from driftd.collect import _gathered

    after = Snapshot()
    results = {
        "packages": {"ansible_facts": {"packages": {}}},
        "services": {"ansible_facts": {"services": {}}},
    }

    assert not _gathered("packages", results, after)
    assert not _gathered("services", results, after)
    expected = Expected(before.data, [], DEFAULT_IGNORE, [])
    comparison = compare(expected, after)
    assert comparison.items == []
    assert comparison.unobserved == ["packages", "services"]


def test_text_that_is_not_utf8_survives_diff_and_json(
    driftd: Driftd, tmp_path: Path
) -> None:
    before = tmp_path / "before.json"
    after = tmp_path / "after.json"
    before.write_bytes(
        b'{"ansible_facts": {"ansible_motd": "caf\xe9", "ansible_x": 1}}'
    )
    after.write_bytes(
        b'{"ansible_facts": {"ansible_motd": "caf\xe9s", "ansible_x": 1}}'
    )

    result = driftd("diff", str(before), str(after), "--json", check=2)
    [item] = result.json()["items"]

    assert item == {
        "path": "facts.motd",
        "kind": "changed",
        "expected": "caf\udce9",
        "actual": "caf\udce9s",
    }
    table = driftd("diff", str(before), str(after), check=2)
    assert "caf\\xe9" in table.out
