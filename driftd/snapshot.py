"""Snapshots: what was observed on a host, normalised so that only meaning compares.

A snapshot is a tree of sections (``facts``, ``packages``, ``services``,
``files``, ``users``, ``groups``, ``ports``). Normalising it makes reordering
and re-serialisation invisible: lists of records become maps keyed by
identity, lists of plain values become sorted multisets, integral floats
become ints and Ansible's ``__ansible_unsafe`` wrappers are removed. Values
that Ansible uses to say "not known" (``N/A``, a service state ``unknown``, a
file checksum it could not read) are dropped and remembered as *unknown*
paths, so that they are neither drift nor proof that drift went away.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from driftd.errors import UserError
from driftd.paths import Path, PathError, format_path, parse_path

SECTIONS = ("facts", "packages", "services", "files", "users", "groups", "ports")

# How the probe marks text that is not UTF-8 (Ansible refuses to carry it).
BYTES_MARK = "__driftd_bytes__:"

PLACEHOLDERS = frozenset({"N/A", "NA"})

# Keys that identify a record inside a list, tried in this order.
IDENTITY_KEYS = ("mount", "interface_name", "name", "device", "path", "address", "key")

# Inventory and connection variables that ride along in hostvars-style dumps.
CONNECTION_VARS = frozenset(
    {
        "ansible_connection",
        "ansible_host",
        "ansible_port",
        "ansible_user",
        "ansible_password",
        "ansible_python_interpreter",
        "ansible_ssh_common_args",
        "ansible_ssh_extra_args",
        "ansible_ssh_private_key_file",
        "ansible_become",
        "ansible_become_user",
        "ansible_become_method",
        "ansible_become_password",
        "ansible_playbook_python",
        "ansible_check_mode",
        "ansible_diff_mode",
        "ansible_forks",
        "ansible_inventory_sources",
        "ansible_run_tags",
        "ansible_skip_tags",
        "ansible_verbosity",
        "ansible_version",
        "ansible_config_file",
        "ansible_search_path",
    }
)

# Variables Ansible sets for every host; their presence marks a hostvars dump.
MAGIC_VARS = frozenset(
    {"inventory_hostname", "group_names", "groups", "hostvars", "playbook_dir", "omit"}
)

Tree = dict[str, Any]


@dataclass
class Snapshot:
    """A normalised observation of one host.

    ``data`` maps section names to their trees; ``unknown`` holds the paths
    whose values were not known (a whole section that was not gathered, or a
    placeholder value), and ``sections`` the sections that were gathered.
    """

    data: Tree = field(default_factory=dict)
    unknown: set[Path] = field(default_factory=set)

    @property
    def sections(self) -> frozenset[str]:
        return frozenset(self.data)

    def is_unknown(self, path: Path) -> bool:
        """Whether ``path`` lies in a part that was not observed.

        Besides sections and placeholders, a top-level fact that is missing is
        unknown: setup leaves out what it could not gather (a timed-out
        subset, a context without the rights), it never reports a removal.
        """
        if path and path[0] not in self.data:
            return True
        if len(path) > 1 and path[0] == "facts" and path[1] not in self.data["facts"]:
            return True

        return any(path[: len(u)] == u for u in self.unknown)

    def surely_absent(self, path: Path) -> bool:
        """Whether a missing top-level fact at ``path`` may count as absent: its
        section was collected and nothing marks that part unknown. For pins
        that ask for absence, which a missing fact is the only way to show."""
        return (
            bool(path)
            and path[0] in self.data
            and not any(path[: len(u)] == u for u in self.unknown)
            and _lookup_missing(self.data, path)
        )

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, ASCII only, so any text survives SQLite)."""
        document = {
            "data": self.data,
            "unknown": sorted(format_path(p) for p in self.unknown),
        }

        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """A snapshot as ``to_json`` wrote it; DumpError if it is not one."""
        document = json.loads(text)
        if not isinstance(document, dict):
            document = {}
        data: Any = document.get("data")
        unknown: Any = document.get("unknown")
        shaped = (
            isinstance(data, dict)
            and all(isinstance(v, dict) for v in data.values())
            and isinstance(unknown, list)
            and all(isinstance(p, str) for p in unknown)
        )
        if not shaped:
            raise DumpError(
                "a driftd snapshot holds data (an object of sections) and unknown "
                "(a list of paths)"
            )

        return cls(data, {parse_path(p) for p in unknown})


class DumpError(UserError, ValueError):
    """Input that is not a fact dump driftd can read."""


def strict_equal(left: Any, right: Any) -> bool:
    """Equality that also requires equal types at every depth (``1 != True``).

    Python's own comparison and ``repr`` run in C: unequal values, and equal
    ones written alike (the common case, a record that did not change), are
    settled there; only equal values that print differently (``1`` and
    ``True``, keys in another order) are walked here.
    """
    if left is right:
        return True
    if left != right:
        return False
    if repr(left) == repr(right):
        return True
    return _strict_walk(left, right)


def _strict_walk(left: Any, right: Any) -> bool:
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(
            strict_equal(v, right[k]) for k, v in left.items()
        )
    if isinstance(left, list):
        return len(left) == len(right) and all(
            strict_equal(a, b) for a, b in zip(left, right, strict=True)
        )

    return bool(left == right)


# --- generic normalisation ----------------------------------------------------------


def _sort_key(value: Any) -> tuple[str, str]:
    return type(value).__name__, json.dumps(value, sort_keys=True, ensure_ascii=True)


def _lookup_missing(tree: Any, path: Path) -> bool:
    for key in path:
        if not isinstance(tree, dict):
            return False
        if key not in tree:
            return True
        tree = tree[key]

    return False


def _identity_key(records: list[Any]) -> str | None:
    if not records or not all(isinstance(r, dict) for r in records):
        return None

    for key in IDENTITY_KEYS:
        values = [r.get(key) for r in records]
        if all(isinstance(v, str) and v for v in values) and len(set(values)) == len(
            values
        ):
            return key

    return None


def _same(value: str) -> str:
    return value


def _probe_text(value: str) -> str:
    """The probe's base64 for text that is not UTF-8, back to surrogate escapes.

    A mark that is not well-formed base64 is left as it came.
    """
    if not value.startswith(BYTES_MARK):
        return value
    try:
        raw = base64.b64decode(value[len(BYTES_MARK) :], validate=True)
    except binascii.Error:
        return value

    return raw.decode("utf-8", "surrogateescape")


def unwrap(value: Any, text: Callable[[str], str] = _same) -> Any:
    """Undo Ansible's ``__ansible_unsafe`` wrappers at any depth, and apply
    ``text`` to every string, keys included."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return unwrap(value["__ansible_unsafe"], text)
        return {text(str(key)): unwrap(item, text) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item, text) for item in value]
    if isinstance(value, str):
        return text(value)

    return value


def unwrap_probe(value: Any) -> Any:
    """Probe output as it was on the host: see ``_probe_text``. Only the probe
    marks text, so only its output is decoded; fact dumps are taken as written."""
    return unwrap(value, _probe_text)


def normalise_value(value: Any, path: Path, unknown: set[Path]) -> Any:
    """Return ``value`` in normal form; placeholders are dropped into ``unknown``."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return normalise_value(value["__ansible_unsafe"], path, unknown)
        result = {}
        for key, item in value.items():
            key_text = str(key)
            child = (*path, key_text)
            if isinstance(item, str) and item in PLACEHOLDERS:
                unknown.add(child)
                continue
            result[key_text] = normalise_value(item, child, unknown)
        return result

    if isinstance(value, list | tuple):
        items = list(value)
        identity = _identity_key(items)
        if identity is not None:
            return {
                r[identity]: normalise_value(r, (*path, r[identity]), unknown)
                for r in items
            }
        normal = [normalise_value(item, path, unknown) for item in items]
        return sorted(normal, key=_sort_key)

    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        # NaN never equals itself and JSON has no spelling for either: as text.
        return str(value)

    return value


# --- facts --------------------------------------------------------------------------


def _strip_prefix(facts: Mapping[str, Any]) -> Tree:
    result: Tree = {}
    for key, value in facts.items():
        if not key.startswith("ansible_") and f"ansible_{key}" not in CONNECTION_VARS:
            result.setdefault(key, value)
    for key, value in facts.items():
        if key.startswith("ansible_") and key not in CONNECTION_VARS:
            result[key.removeprefix("ansible_")] = value

    return result


def _gather_interfaces(facts: Tree) -> None:
    names = facts.get("interfaces")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return

    detail: Tree = {}
    for name in names:
        fact_key = name.replace("-", "_").replace(":", "_").replace(".", "_")
        value = facts.get(fact_key)
        if isinstance(value, dict):
            del facts[fact_key]
            detail[name] = value
        else:
            detail[name] = {}
    facts["interfaces"] = detail


def normalise_facts(raw: Mapping[str, Any]) -> tuple[Tree, set[Path]]:
    """Normalise setup facts: unprefixed keys, interfaces keyed by name."""
    unknown: set[Path] = set()
    facts = _strip_prefix(unwrap(raw))
    facts.pop("facts", None)
    _gather_interfaces(facts)
    normal = normalise_value(facts, ("facts",), unknown)

    return normal, unknown


# --- packages, services, files, accounts, ports -------------------------------------


def package_version(record: Mapping[str, Any]) -> str:
    """One installed version as ``[epoch:]version[-release]``."""
    epoch = record.get("epoch")
    if isinstance(epoch, float) and epoch.is_integer():
        epoch = int(epoch)
    version = str(record.get("version") or "")
    release = record.get("release")
    text = f"{version}-{release}" if release else version
    if epoch not in (None, "", 0, "0", "(none)"):
        text = f"{epoch}:{text}"

    return text


def normalise_packages(raw: Any) -> Tree:
    """Packages keyed by name, each the sorted list of its installed versions.

    Takes ``package_facts`` output (name to list of records), the legacy list
    of records (AWX scan_packages), or the probe's ``name, version`` pairs.
    """
    versions: dict[str, list[str]] = {}
    if isinstance(raw, Mapping):
        pairs: Iterable[tuple[str, Any]] = raw.items()
        for name, records in pairs:
            entries = records if isinstance(records, list) else [records]
            for record in entries:
                if isinstance(record, Mapping):
                    versions.setdefault(str(name), []).append(package_version(record))
    elif isinstance(raw, list):
        for record in raw:
            if isinstance(record, Mapping) and record.get("name"):
                version = package_version(record)
                versions.setdefault(str(record["name"]), []).append(version)

    return {name: sorted(v) for name, v in versions.items()}


def normalise_services(raw: Any, unknown: set[Path]) -> Tree:
    """Services keyed by name: state, status (where known) and source."""
    records: Iterable[Any]
    if isinstance(raw, Mapping):
        records = ({"name": k, **v} for k, v in raw.items() if isinstance(v, Mapping))
    elif isinstance(raw, list):
        records = raw
    else:
        return {}

    services: Tree = {}
    for record in records:
        if not isinstance(record, Mapping) or not record.get("name"):
            continue
        name = str(record["name"])
        entry: Tree = {}
        for key in ("state", "status", "source"):
            value = record.get(key)
            if value is None:
                continue
            if value == "unknown":
                unknown.add(("services", name, key))
                continue
            entry[key] = value
        services[name] = entry

    return services


# --- reading fact dumps -------------------------------------------------------------


_AD_HOC = re.compile(r"\s*([^\s|{}\[\]\"]+) \| ([A-Z!]+)(?: \| rc=\d+)? =>")


def _split_ad_hoc(text: str, name: str) -> str:
    """The JSON after ``HOST | SUCCESS =>``, as ``ansible -m setup`` prints it."""
    match = _AD_HOC.match(text)
    if match is None:
        return text
    status = match.group(2).rstrip("!")
    if status not in ("SUCCESS", "CHANGED"):
        raise DumpError(f"{name}: not a fact dump: the host result is {status}")

    return text[match.end() :]


def _legacy_list(document: list[Any], name: str) -> tuple[None, Any, Any]:
    """AWX's old scan_packages / scan_services lists."""
    records = [r for r in document if isinstance(r, Mapping)]
    if records and all("version" in r for r in records):
        return None, document, None
    if records and all("state" in r for r in records):
        return None, None, document

    raise DumpError(f"{name}: not a fact dump: a list of unknown records")


def _facts_from_document(document: Any, name: str) -> tuple[Tree | None, Any, Any]:
    """Split a parsed dump into (facts, packages, services); raise if not a dump."""
    if isinstance(document, list):
        return _legacy_list(document, name)

    if not isinstance(document, Mapping) or not document:
        raise DumpError(f"{name}: not a fact dump: expected a JSON object of facts")

    if len(document) == 1:
        (inner,) = document.values()
        if isinstance(inner, Mapping) and any(k.startswith("ansible_") for k in inner):
            # A debug dump of one host's vars: {"hostvars['web1']": {...}}
            return _facts_from_document(inner, name)

    if document.get("unreachable"):
        raise DumpError(f"{name}: not a fact dump: an UNREACHABLE host result")
    if document.get("failed"):
        raise DumpError(f"{name}: not a fact dump: a FAILED host result")

    facts: dict[str, Any]
    nested = document.get("ansible_facts")
    if nested is not None and not isinstance(nested, Mapping):
        kind = type(nested).__name__
        raise DumpError(
            f"{name}: ansible_facts: must be an object of facts, not {kind}"
        )
    if isinstance(nested, Mapping) or MAGIC_VARS & document.keys():
        # A module result or a hostvars dump: facts, beside inventory variables.
        facts = dict(nested) if isinstance(nested, Mapping) else {}
        for key, value in document.items():
            if key.startswith("ansible_") and key != "ansible_facts":
                facts.setdefault(key, value)
    else:
        facts = dict(document)

    packages = facts.pop("packages", None)
    services = facts.pop("services", None)
    known = [k for k in facts if not k.startswith("_")]
    if not known and packages is None and services is None:
        raise DumpError(f"{name}: not a fact dump: no facts in it")

    return facts or None, packages, services


def snapshot_from_facts(
    facts: Mapping[str, Any] | None, packages: Any = None, services: Any = None
) -> Snapshot:
    """Build a snapshot from raw Ansible results of the facts-bearing modules."""
    snapshot = Snapshot()
    if facts:
        snapshot.data["facts"], unknown = normalise_facts(facts)
        snapshot.unknown |= unknown
    if packages is not None:
        snapshot.data["packages"] = normalise_packages(packages)
    if services is not None:
        snapshot.data["services"] = normalise_services(services, snapshot.unknown)

    return snapshot


def load_dump_text(text: str, name: str) -> Snapshot:
    """Read one fact dump in any shape Ansible writes; raise DumpError if not one."""
    try:
        return _load_dump_text(text, name)
    except RecursionError:
        raise DumpError(f"{name}: nested too deeply to be a fact dump") from None


def _load_dump_text(text: str, name: str) -> Snapshot:
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
        raise DumpError(f"{name}: empty file")

    body = _split_ad_hoc(text, name)
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise DumpError(
            f"{name}: line {error.lineno} column {error.colno}: not valid JSON "
            f"({error.msg})"
        ) from error

    if isinstance(document, Mapping) and {"data", "unknown"} <= document.keys():
        try:
            return Snapshot.from_json(body)  # a snapshot driftd stored
        except (DumpError, PathError) as error:
            raise DumpError(f"{name}: {error}") from None

    facts, packages, services = _facts_from_document(document, name)

    return snapshot_from_facts(facts, packages, services)
