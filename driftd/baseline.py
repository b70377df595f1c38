"""Baselines: what hosts are expected to look like, as layered YAML files.

A baselines directory holds ``all.yml`` (every host), ``groups/GROUP.yml``
(hosts of one inventory group) and ``hosts/HOST.yml`` (one host). Later layers
override earlier ones. A layer may hold:

``description``
    free text.
``ignore``
    extra ignore rules (path globs) for the hosts it applies to.
``expect``
    values pinned at paths, each a plain value (equality) or one matcher:
    ``{one_of: [...]}``, ``{regex: "..."}`` (the whole value must match),
    ``{version: ">=1.2, <2"}``, ``{present: true}`` or ``{absent: true}``.
``snapshot``
    a captured snapshot: the listed sections are compared exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from driftd import yamlfile
from driftd.errors import UserError
from driftd.paths import Path, PathError, format_path, lookup, parse_path
from driftd.snapshot import SECTIONS, normalise_value, strict_equal

# Facts that change on their own; hidden unless a user turns the defaults off.
DEFAULT_IGNORE: tuple[str, ...] = (
    "facts.date_time",
    "facts.uptime_seconds",
    "facts.memfree_mb",
    "facts.swapfree_mb",
    "facts.memory_mb.*.free",
    "facts.memory_mb.*.used",
    "facts.memory_mb.*.cached",
    "facts.mounts.*.size_available",
    "facts.mounts.*.block_available",
    "facts.mounts.*.block_used",
    "facts.mounts.*.inode_available",
    "facts.mounts.*.inode_used",
    "facts.loadavg",
    "facts.env",
    "facts.gather_subset",
    "facts.module_setup",
    "facts.discovered_interpreter_python",
    "facts._ansible_facts_gathered",
    "facts.lvm.vgs.*.free_g",
    # Device numbers the kernel hands out at boot (loopN, dm-N), and what hangs
    # on them: the same snaps and LUKS volumes come back under other numbers.
    "facts.devices.loop*",
    'facts.mounts["/snap/*"].device',
    "facts.devices.dm-*.links",
    "facts.devices.*.links.masters",
    "facts.device_links.*.dm-*",
    "facts.device_links.masters",
)

LAYER_KEYS = ("description", "ignore", "expect", "snapshot")
MATCHERS = ("equals", "one_of", "regex", "version", "present", "absent")

Tree = dict[str, Any]


class BaselineError(UserError, ValueError):
    """Baseline files that cannot be used; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- versions -----------------------------------------------------------------------


_VERSION_PART = re.compile(r"(\d+|[^\d]+)")


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)

    return ord(char) + 256


def _compare_part(left: str, right: str) -> int:
    while left or right:
        left_text = re.match(r"\D*", left)
        right_text = re.match(r"\D*", right)
        a = left_text.group(0) if left_text else ""
        b = right_text.group(0) if right_text else ""
        for i in range(max(len(a), len(b))):
            ca = _order(a[i]) if i < len(a) else 0
            cb = _order(b[i]) if i < len(b) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        left, right = left[len(a) :], right[len(b) :]
        left_num = re.match(r"\d*", left)
        right_num = re.match(r"\d*", right)
        na = left_num.group(0) if left_num else ""
        nb = right_num.group(0) if right_num else ""
        if int(na or 0) != int(nb or 0):
            return -1 if int(na or 0) < int(nb or 0) else 1
        left, right = left[len(na) :], right[len(nb) :]

    return 0


def compare_versions(left: str, right: str) -> int:
    """Order two package versions as dpkg does (``epoch:upstream-revision``,
    ``~`` before anything); RPM versions order the same way in practice."""

    def split(text: str) -> tuple[int, str, str]:
        epoch, _, rest = text.partition(":") if ":" in text else ("0", "", text)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        number = epoch.isascii() and epoch.isdigit()
        return (int(epoch) if number else 0), upstream, revision

    le, lu, lr = split(left)
    re_, ru, rr = split(right)
    if le != re_:
        return -1 if le < re_ else 1

    return _compare_part(lu, ru) or _compare_part(lr, rr)


_CONSTRAINT = re.compile(r"\s*(>=|<=|==|!=|>|<|=)\s*(\S+)\s*\Z")


def parse_version_range(text: str) -> list[tuple[str, str]]:
    """``">=1.2, <2"`` as (operator, version) pairs; ValueError if malformed."""
    constraints = []
    for part in text.split(","):
        match = _CONSTRAINT.match(part)
        if not match or match.group(2)[0] in "<>=!":
            raise ValueError(f"not a version constraint: {part.strip()!r}")
        constraints.append((match.group(1), match.group(2)))

    return constraints


def _satisfies(version: str, constraints: list[tuple[str, str]]) -> bool:
    tests = {
        ">=": lambda c: c >= 0,
        "<=": lambda c: c <= 0,
        ">": lambda c: c > 0,
        "<": lambda c: c < 0,
        "==": lambda c: c == 0,
        "=": lambda c: c == 0,
        "!=": lambda c: c != 0,
    }

    return all(tests[op](compare_versions(version, v)) for op, v in constraints)


# --- matchers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """A test a pinned value must pass."""

    op: str
    arg: Any

    def check(self, found: bool, value: Any) -> bool:
        """Whether the observed value (``found`` False: no value) passes."""
        if self.op == "absent":
            return not found
        if not found:
            return False
        if self.op == "present":
            return True
        if (
            isinstance(value, list)
            and len(value) == 1
            and not isinstance(self.arg, list)
        ):
            value = value[0]
        if self.op == "equals":
            return strict_equal(self.arg, value)
        if self.op == "one_of":
            return any(strict_equal(choice, value) for choice in self.arg)
        if self.op == "regex":
            return isinstance(value, str) and re.fullmatch(self.arg, value) is not None

        versions = value if isinstance(value, list) else [value]
        constraints = parse_version_range(self.arg)

        return bool(versions) and all(_satisfies(str(v), constraints) for v in versions)

    def describe(self) -> Any:
        """The expected value as shown to people: plain for equality."""
        return self.arg if self.op == "equals" else {self.op: self.arg}


def parse_matcher(value: Any) -> Matcher:
    """Read one ``expect`` value; ValueError says what is wrong with it."""
    if not isinstance(value, dict):
        return Matcher("equals", normalise_value(value, (), set()))
    if len(value) != 1 or next(iter(value)) not in MATCHERS:
        keys = ", ".join(map(str, value)) or "nothing"
        raise ValueError(
            f"a matcher needs exactly one of {', '.join(MATCHERS)} (found {keys}); "
            "to expect a mapping, write {equals: {...}}"
        )

    op, arg = next(iter(value.items()))
    if op in ("present", "absent") and arg is not True:
        raise ValueError(f"{op} takes true")
    if op == "one_of" and not isinstance(arg, list):
        raise ValueError("one_of takes a list")
    if op == "regex":
        if not isinstance(arg, str):
            raise ValueError("regex takes a string")
        try:
            re.compile(arg)
        except (re.error, OverflowError, RecursionError) as error:
            raise ValueError(f"bad regex: {error}") from error
    if op == "version":
        if not isinstance(arg, str):
            raise ValueError("version takes a string such as '>=1.2, <2'")
        parse_version_range(arg)
    if op == "equals":
        arg = normalise_value(arg, (), set())
    if op == "one_of":
        arg = [normalise_value(choice, (), set()) for choice in arg]

    return Matcher(op, arg)


# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """A pinned path. It ``hides`` the snapshot's own items at and below its
    path (the pin says what is expected there), unless it only asks for
    presence, or a later layer's snapshot speaks of that path again: later
    layers override earlier ones."""

    path: Path
    matcher: Matcher
    source: str
    hides: bool = True


@dataclass
class Layer:
    """One baseline file as loaded: ``name`` is its path inside the directory."""

    name: str
    text: str
    description: str = ""
    ignore: tuple[str, ...] = ()
    pins: dict[Path, Matcher] = field(default_factory=dict)
    snapshot: Tree = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class Expected:
    """What one host is expected to be: layers merged in order."""

    tree: Tree
    pins: list[Pin]
    ignore: tuple[str, ...]
    layers: list[Layer]
    unknown: set[Path] = field(default_factory=set)
    # Each section's tree under the ignore rules, pruned once: compare fills it.
    pruned: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _line_of(text: str, keys: list[Any]) -> int | None:
    node = yamlfile.compose(text)
    if node is None:
        return None

    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == key:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break

    return line


def _problem(name: str, text: str, keys: list[Any], message: str) -> str:
    line = _line_of(text, keys)
    where = f"{name}:{line}" if line else name
    key = ".".join(str(k) for k in keys)

    return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def _yaml_problem(name: str, error: yamlfile.YamlError) -> str:
    where = f"{name}:{error.line}" if error.line else name

    return f"{where}: {error.message}"


def parse_layer(name: str, text: str) -> Layer:
    """Read and check one baseline file; BaselineError lists every problem."""
    try:
        document = yamlfile.load(text)
    except yamlfile.YamlError as error:
        raise BaselineError([_yaml_problem(name, error)]) from error

    if document is None:
        return Layer(name, text)
    if not isinstance(document, dict):
        raise BaselineError([f"{name}:1: a baseline file must be a mapping"])

    problems: list[str] = []
    layer = Layer(name, text)
    for key in document:
        if key not in LAYER_KEYS:
            problems.append(
                _problem(
                    name, text, [key], f"unknown key (use {', '.join(LAYER_KEYS)})"
                )
            )

    description = document.get("description", "")
    if not isinstance(description, str):
        problems.append(_problem(name, text, ["description"], "must be text"))
    layer.description = str(description or "")

    _read_ignore(layer, document.get("ignore"), problems)
    _read_expect(layer, document.get("expect"), problems)
    _read_snapshot(layer, document.get("snapshot"), problems)
    if problems:
        raise BaselineError(problems)

    return layer


def _read_ignore(layer: Layer, value: Any, problems: list[str]) -> None:
    from driftd.paths import compile_glob

    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(
            _problem(layer.name, layer.text, ["ignore"], "must be a list of path globs")
        )
        return
    for rule in value:
        try:
            compile_glob(rule)
        except PathError as error:
            problems.append(
                _problem(layer.name, layer.text, ["ignore"], f"{rule!r}: {error}")
            )
    layer.ignore = tuple(value)


def pin_path(text: str) -> Path:
    """A pinned path: driftd syntax, starting with a known section."""
    path = parse_path(text)
    if path[0] not in SECTIONS:
        raise PathError(f"unknown section {path[0]!r} (use {', '.join(SECTIONS)})")

    return path


def _read_expect(layer: Layer, value: Any, problems: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(
            _problem(layer.name, layer.text, ["expect"], "must map paths to values")
        )
        return
    written: dict[Path, str] = {}
    for key, wanted in value.items():
        try:
            path = pin_path(str(key))
            matcher = parse_matcher(wanted)
        except (PathError, ValueError) as error:
            problems.append(
                _problem(layer.name, layer.text, ["expect", key], str(error))
            )
            continue
        if path in written:
            problems.append(
                _problem(
                    layer.name,
                    layer.text,
                    ["expect", key],
                    f"the same path as {written[path]!r}",
                )
            )
        written[path] = str(key)
        layer.pins[path] = matcher


def _read_snapshot(layer: Layer, value: Any, problems: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(
            _problem(
                layer.name, layer.text, ["snapshot"], "must map sections to values"
            )
        )
        return
    for section, tree in value.items():
        if section not in SECTIONS:
            problems.append(
                _problem(
                    layer.name,
                    layer.text,
                    ["snapshot", section],
                    f"unknown section (use {', '.join(SECTIONS)})",
                )
            )
        elif not isinstance(tree, dict):
            problems.append(
                _problem(
                    layer.name, layer.text, ["snapshot", section], "must be a mapping"
                )
            )
        else:
            layer.snapshot[section] = normalise_value(tree, (section,), set())


# --- the directory ------------------------------------------------------------------


def host_file_name(host: str) -> str:
    """The file of a host's layer, inside ``hosts/``: never a path elsewhere."""
    quoted = urllib.parse.quote(host, safe="@_-+=,")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]

    return f"hosts/{quoted}.yml"


def group_file_name(group: str) -> str:
    return f"groups/{urllib.parse.quote(group, safe='@_-+=,')}.yml"


def _merge(base: Tree, over: Mapping[str, Any]) -> Tree:
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value

    return result


@dataclass
class BaselineSet:
    """Every layer of one baselines directory, checked and ready to merge."""

    root: FsPath
    layers: dict[str, Layer]
    stamp: tuple[tuple[str, int, int], ...] = ()
    merged: dict[tuple[Any, ...], Expected | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def load(cls, root: FsPath) -> BaselineSet:
        """Load every layer (``.yml`` or ``.yaml``); BaselineError lists every
        problem at once."""
        if not root.is_dir():
            raise BaselineError([f"{root}: baselines directory does not exist"])

        problems: list[str] = []
        files = _layer_files(root, problems)
        layers: dict[str, Layer] = {}
        for path in files:
            if not path.is_file():
                continue
            name = path.relative_to(root).as_posix()
            key = canonical_name(name)
            if key in layers:
                problems.append(
                    f"{root}/{name}: {layers[key].name} is the same layer: keep one"
                )
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="surrogateescape")
                layers[key] = parse_layer(name, text)
            except BaselineError as error:
                problems += [f"{root}/{p}" for p in error.problems]
            except OSError as error:
                problems.append(f"{path}: cannot read: {error.strerror}")
        if problems:
            raise BaselineError(problems)

        return cls(root, layers, _stamp(files))

    def fresh(self) -> BaselineSet:
        """These layers, or the files again if any changed since they were read."""
        files = _layer_files(self.root, [])

        return self if _stamp(files) == self.stamp else BaselineSet.load(self.root)

    @functools.cached_property
    def commit(self) -> str | None:
        """The git commit these files were read at: looked up once per load."""
        return git_commit(self.root)

    def file_of(self, name: str) -> str:
        """The file that holds layer ``name`` (``X.yml``): ``X.yaml`` if that is
        the one that exists."""
        layer = self.layers.get(name)

        return layer.name if layer else name

    def layers_for(self, host: str, groups: Iterable[str]) -> list[Layer]:
        """The layers that apply to a host, earliest first."""
        names = ["all.yml", *(group_file_name(g) for g in groups), host_file_name(host)]

        return [self.layers[n] for n in names if n in self.layers]

    def expected(
        self, host: str, groups: Iterable[str], ignore: Iterable[str]
    ) -> Expected | None:
        """The merged expectation for a host, or None when no layer applies.

        Kept for the life of this set (one load of the files): a daemon
        merges and prunes each host's layers once, not once per scan.
        """
        key = (host, tuple(groups), tuple(ignore))
        if key not in self.merged:
            layers = self.layers_for(host, key[1])
            self.merged[key] = merge_layers(layers, key[2]) if layers else None

        return self.merged[key]


def _layer_files(root: FsPath, problems: list[str]) -> list[FsPath]:
    """Where layers can be: all.yml, groups/ and hosts/ (unlistable: a problem)."""
    files = [root / "all.yml", root / "all.yaml"]
    for sub in ("groups", "hosts"):
        folder = root / sub
        try:
            if folder.is_dir():
                files += sorted(p for p in folder.iterdir() if is_layer_file(p))
        except OSError as error:
            problems.append(f"{folder}: cannot list: {error.strerror}")

    return files


def git_commit(directory: FsPath) -> str | None:
    """HEAD of the git checkout holding ``directory`` (``+dirty`` if changed)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None

    return f"{head}+dirty" if dirty else head


def _stamp(files: Iterable[FsPath]) -> tuple[tuple[str, int, int], ...]:
    """Name, change time and size of each file: cheap to take, changed by any
    write (an atomic rename included)."""
    stamps = []
    for path in sorted(files):
        with contextlib.suppress(OSError):
            info = path.stat()
            stamps.append((str(path), info.st_mtime_ns, info.st_size))

    return tuple(stamps)


def merge_layers(layers: list[Layer], ignore: Iterable[str]) -> Expected:
    """Layers merged in order: later snapshots and pins override earlier ones."""
    tree: Tree = {}
    pins: dict[Path, Pin] = {}
    rules = list(ignore)
    for layer in layers:
        tree = _merge(tree, layer.snapshot)
        for path, pin in pins.items():
            if pin.hides and lookup(layer.snapshot, path)[0]:
                pins[path] = dataclasses.replace(pin, hides=False)
        for path, matcher in layer.pins.items():
            pins[path] = Pin(path, matcher, layer.name, matcher.op != "present")
        rules += layer.ignore

    return Expected(tree, list(pins.values()), tuple(dict.fromkeys(rules)), layers)


def canonical_name(name: str) -> str:
    """Layers are known by their ``.yml`` name; ``.yaml`` files are read alike."""
    return name.removesuffix(".yaml") + ".yml" if name.endswith(".yaml") else name


def is_layer_file(path: FsPath) -> bool:
    name = path.name
    temporary = name.startswith((".", "#")) or name.endswith(("~", ".swp", ".tmp"))

    return path.suffix in (".yml", ".yaml") and not temporary and path.is_file()


# --- writing ------------------------------------------------------------------------


def dump_layer(document: Mapping[str, Any]) -> str:
    """YAML text of a layer: its keys in the order people read them, pins in
    the order they were written, the snapshot sorted (the same content always
    gives the same file, whether it was collected now or read from history)."""
    ordered = {k: document[k] for k in LAYER_KEYS if k in document}
    if "snapshot" in ordered:
        ordered["snapshot"] = _sorted_tree(ordered["snapshot"])

    return yaml.safe_dump(
        ordered,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )


def _sorted_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_tree(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted_tree(item) for item in value]

    return value


def write_atomic(path: FsPath, text: str) -> None:
    """Replace ``path`` with ``text`` at once: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(
            descriptor, "w", encoding="utf-8", errors="surrogateescape"
        ) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        FsPath(temporary).unlink(missing_ok=True)
        raise


def load_document(path: FsPath) -> Tree:
    """The raw mapping of a layer file, or an empty one if it does not exist."""
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        document = yamlfile.load(text)
    except OSError as error:
        raise BaselineError([f"{path}: cannot read: {error.strerror}"]) from error
    except yamlfile.YamlError as error:
        raise BaselineError([_yaml_problem(str(path), error)]) from error

    return document if isinstance(document, dict) else {}


def pin_text(path: Path) -> str:
    return format_path(path)
