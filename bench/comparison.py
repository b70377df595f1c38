"""Figure 3: comparing one large host with its baseline, in-process.

The host: a real Debian 12 fact dump (tests/fixtures/facts) plus synthesised
sections in driftd's normal form, as driftd.collect builds them from the
probe and service_facts: 3,000 packages, 300 services, 500 files, local
users and groups, a few listening ports. Its baseline is what ``driftd
baseline capture`` would write (the snapshot without volatile facts) under
the example all.yml with its pins; the actual side differs in exactly 5 (or
400) drift items, checked before timing.

driftd.compare.compare(), with explain=True as a scan calls it (it also
counts what each ignore rule hid), is set against a whole-snapshot
``DeepDiff(expected, actual)`` (default options) of the same two trees,
interleaved in the same rounds.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.common import FACTS_FIXTURE, BenchError, Figure, median, source, spread

PACKAGES, SERVICES, FILES = 3000, 300, 500
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "acl apt attr audit base bind blk bsd bz2 cap cairo curl db dbus debconf "
    "drm e2fs elf expat ffi fontconfig freetype gcc gdbm glib gmp gnutls gpg "
    "gssapi hogweed icu idn2 jansson json kmod krb5 ldap lz4 lzma magic mount "
    "ncurses nettle nghttp2 nss numa p11 pam pcre2 perl pixman png popt psl "
    "python3 readline rtmp sasl2 seccomp selinux semanage sepol smartcols "
    "sqlite3 ssh ssl systemd tasn1 tinfo udev unistring uuid xml2 xxhash "
    "yaml zstd"
).split()


def _version(rng: random.Random) -> str:
    epoch = rng.choice(("", "", "", "1:", "2:"))
    upstream = ".".join(str(rng.randint(0, 40)) for _ in range(rng.randint(2, 3)))
    revision = rng.choice(("-1", "-2", "-3+b1", "-9+deb12u4", "-1~deb12u1", "+dfsg-2"))
    return f"{epoch}{upstream}{revision}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def host_snapshot(seed: int = 3000) -> Any:
    """A normalised snapshot of one large Debian host (driftd.snapshot.Snapshot)."""
    from driftd.snapshot import (
        Snapshot,
        load_dump_text,
        normalise_services,
        normalise_value,
    )

    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    facts = source() / FACTS_FIXTURE
    snapshot: Snapshot = load_dump_text(facts.read_text(), facts.name)

    packages: dict[str, list[str]] = {"openssh-server": ["1:9.2p1-2+deb12u3"]}
    while len(packages) < PACKAGES:
        word = rng.choice(WORDS)
        name = rng.choice(
            (f"lib{word}{rng.randint(0, 9)}", f"{word}-utils", f"python3-{word}",
             f"lib{word}-{rng.randint(1, 99)}-dev", f"{word}{rng.randint(1, 999)}")
        )  # fmt: skip
        packages.setdefault(name, [_version(rng)])
    # As driftd.collect takes them from the probe: name -> sorted versions.
    snapshot.data["packages"] = {n: sorted(v) for n, v in packages.items()}

    services = {}
    for number in range(SERVICES):
        name = f"{rng.choice(WORDS)}-{number}.service"
        services[name] = {
            "name": name,
            "state": rng.choice(("running", "running", "stopped", "inactive")),
            "status": rng.choice(("enabled", "disabled", "static", "indirect")),
            "source": "systemd",
        }
    snapshot.data["services"] = normalise_services(services, snapshot.unknown)

    files = {
        "/etc/passwd": {"mode": "0644"},
        "/etc/shadow": {"mode": "0640", "group": "shadow"},
        "/etc/ssh/sshd_config": {"mode": "0644"},
    }
    while len(files) < FILES:
        files[f"/etc/{rng.choice(WORDS)}/{rng.choice(WORDS)}-{len(files)}.conf"] = {}
    stats = {}
    for path, overrides in files.items():
        size = rng.randint(20, 40_000)
        stats[path] = {
            "exists": True,
            "type": "file",
            "mode": "0644",
            "owner": "root",
            "group": "root",
            "size": size,
            "checksum": _digest(f"{path}:{size}"),
            **overrides,
        }
    snapshot.data["files"] = normalise_value(stats, ("files",), snapshot.unknown)

    users: dict[str, dict[str, Any]] = {
        "root": {
            "uid": 0,
            "gid": 0,
            "gecos": "root",
            "home": "/root",
            "shell": "/bin/bash",
        }
    }
    groups = {"root": {"gid": 0, "members": []}}
    for number, word in enumerate(WORDS[:40], start=1):
        users[word] = {"uid": number, "gid": number, "gecos": word}
        users[word] |= {"home": "/nonexistent", "shell": "/usr/sbin/nologin"}
        groups[word] = {"gid": number, "members": [word] if number % 3 else []}
    snapshot.data["users"] = normalise_value(users, ("users",), snapshot.unknown)
    snapshot.data["groups"] = normalise_value(groups, ("groups",), snapshot.unknown)
    anywhere = "0.0.0.0"  # noqa: S104 (a listening address as the probe reports it)
    ports = {
        f"tcp {anywhere}:{port}": {"proto": "tcp", "address": anywhere, "port": port}
        for port in (22, 80, 443, 5432, 9100)
    }
    snapshot.data["ports"] = normalise_value(ports, ("ports",), snapshot.unknown)

    return snapshot


def expected_for(snapshot: Any) -> Any:
    """The baseline capture would write for ``snapshot``, under the example all.yml."""
    from driftd.baseline import DEFAULT_IGNORE, Layer, merge_layers, parse_layer
    from driftd.scan import pruned

    example = parse_layer("all.yml", (source() / "baselines" / "all.yml").read_text())
    captured = Layer(
        "hosts/bench.yml", "", snapshot=pruned(snapshot, DEFAULT_IGNORE).data
    )

    return merge_layers([example, copy.deepcopy(captured)], DEFAULT_IGNORE)


def drifted(snapshot: Any, count: int, seed: int = 5) -> Any:
    """A copy of ``snapshot`` with exactly ``count`` drift items (one per change)."""
    rng = random.Random(seed)  # noqa: S311
    actual = copy.deepcopy(snapshot)
    data = actual.data
    names = sorted(n for n in data["packages"] if n != "openssh-server")
    services = sorted(data["services"])
    files = sorted(
        p
        for p in data["files"]
        if not p.startswith(("/etc/passwd", "/etc/sh", "/etc/ssh"))
    )
    rng.shuffle(names)
    rng.shuffle(services)
    rng.shuffle(files)
    # Changed package versions, removed and added packages, services, files:
    # one of each for a few differences, 3:1:1:1.5:1.5 of many.
    if count < 16:
        counts = [count - 4, 1, 1, 1, 1]
    else:
        counts = [round(count * s / 8) for s in (3, 1, 1, 1.5, 1.5)]
        counts[0] += count - sum(counts)
    changed, removed, added, service_changes, file_changes = counts
    for name in names[:changed]:
        data["packages"][name] = [data["packages"][name][0] + ".1"]
    for name in names[changed : changed + removed]:
        del data["packages"][name]
    for number in range(added):
        data["packages"][f"bench-added-{number}"] = ["1.0-1"]
    for name in services[:service_changes]:
        entry = data["services"][name]
        entry["state"] = "stopped" if entry.get("state") == "running" else "running"
    for path in files[:file_changes]:
        data["files"][path]["checksum"] = _digest(f"{path}:edited")

    return actual


def _time(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def figures(*, runs: int, deep_runs: int, log: Any) -> list[Figure]:
    from deepdiff import DeepDiff

    from driftd.compare import compare

    snapshot = host_snapshot()
    expected = expected_for(snapshot)
    result = []
    for count in (5, 400):
        actual = drifted(snapshot, count)
        found = compare(expected, actual).items
        if len(found) != count:
            raise BenchError(f"the {count}-difference host gives {len(found)} items")
        if compare(expected, snapshot).items:
            raise BenchError("the unchanged host does not compare clean")
        compare(expected, actual)  # warm-up
        ours: list[float] = []
        explained: list[float] = []
        theirs: list[float] = []
        for _round in range(deep_runs):
            theirs.append(_time(partial(DeepDiff, expected.tree, actual.data)))
            for _ in range(max(1, runs // deep_runs)):
                ours.append(_time(partial(compare, expected, actual)))
                explained.append(
                    _time(partial(compare, expected, actual, explain=True))
                )
        mine, deep = median(explained), median(theirs)
        message = f"compare {mine * 1e3:.2f} ms, DeepDiff {deep * 1e3:.0f} ms"
        log(f"  {count} differences: {message}")
        context = (
            f"compare(explain=True) as scans call it; {PACKAGES} packages, "
            f"{SERVICES} services, {FILES} files, {count} items; median of "
            f"{len(explained)}"
        )
        result.append(
            Figure(
                f"compare_{count}_diffs_ms",
                mine * 1000,
                unit="ms",
                target=("<=", 20),
                context=context,
                details=[
                    f"compare(explain=True) with {count} differences: "
                    f"{_ms(explained)} ms; without explain: median "
                    f"{median(ours) * 1000:.2f} ms, range {_ms(ours)} ms"
                ],
            )
        )
        result.append(
            Figure(
                f"compare_{count}_vs_deepdiff",
                mine / deep,
                target=("<=", 1 / 25),
                shown=f"1/{deep / mine:.0f}",
                target_shown="<=1/25",
                context=(
                    f"whole-snapshot DeepDiff {deep * 1000:.0f} ms (median of "
                    f"{len(theirs)}, range {spread([t * 1000 for t in theirs])} ms)"
                ),
            )
        )
    return result


def _ms(values: list[float]) -> str:
    return spread([v * 1000 for v in values])
