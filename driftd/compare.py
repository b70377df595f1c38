"""Comparison of a snapshot with what a baseline expects: drift items.

Records are compared by identity and by strict equality first (a type change
such as ``true`` against ``1`` is never equal); DeepDiff only walks the
records that differ, and its path strings are translated into driftd paths.
A list of plain values is a multiset, so a difference inside it is reported
once, at the list, with both lists.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepdiff import DeepDiff

from driftd.baseline import Expected, Matcher
from driftd.paths import GlobSet, Path, format_path, lookup
from driftd.snapshot import Snapshot, strict_equal

KINDS = ("added", "removed", "changed", "type_changed")

_REPORTS = {
    "dictionary_item_added": "added",
    "dictionary_item_removed": "removed",
    "values_changed": "changed",
    "type_changes": "type_changed",
}


@dataclass(frozen=True)
class DriftItem:
    """One difference at one path: ``expected`` is None for ``added`` items,
    ``actual`` is None for ``removed`` ones."""

    path: Path
    kind: str
    expected: Any
    actual: Any

    @property
    def path_text(self) -> str:
        return format_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path_text,
            "kind": self.kind,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass
class Comparison:
    """The drift items of one snapshot against one baseline.

    ``hidden`` counts, per ignore rule, the items it hid (only when the
    comparison was asked to explain itself).
    """

    items: list[DriftItem]
    hidden: dict[str, int] = field(default_factory=dict)
    unobserved: list[str] = field(default_factory=list)


def _loose(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)

    return str(value)


def _value_kind(expected: Any, actual: Any) -> str:
    if isinstance(expected, list) and isinstance(actual, list):
        loose_equal = Counter(map(_loose, expected)) == Counter(map(_loose, actual))
        return "type_changed" if loose_equal else "changed"
    if type(expected) is not type(actual):
        return "type_changed"

    return "changed"


def _get(tree: Any, path: Sequence[Any]) -> Any:
    for key in path:
        tree = tree[key]

    return tree


def _record_items(path: Path, expected: Any, actual: Any) -> Iterator[DriftItem]:
    """Drift inside one record that is known to differ."""
    if not (isinstance(expected, dict) and isinstance(actual, dict)):
        yield DriftItem(path, _value_kind(expected, actual), expected, actual)
        return

    diff = DeepDiff(
        expected, actual, threshold_to_diff_deeper=0, verbose_level=2, view="tree"
    )
    seen: set[Path] = set()
    for report, levels in diff.tree.items():
        for level in levels:
            relative = level.path(output_format="list")
            cut = _list_cut(expected, actual, relative)
            full: Path = (*path, *relative[:cut])
            if full in seen:
                continue
            seen.add(full)
            if cut < len(relative):
                old = _get(expected, relative[:cut])
                new = _get(actual, relative[:cut])
                yield DriftItem(full, _value_kind(old, new), old, new)
            else:
                kind = _REPORTS.get(report, "changed")
                old = None if kind == "added" else level.t1
                new = None if kind == "removed" else level.t2
                yield DriftItem(full, kind, old, new)


def _list_cut(expected: Any, actual: Any, relative: Sequence[Any]) -> int:
    """How many keys of ``relative`` lead to the first list on either side."""
    for depth in range(len(relative)):
        for tree in (expected, actual):
            try:
                node = _get(tree, relative[:depth])
            except (KeyError, IndexError, TypeError):
                continue
            if isinstance(node, list):
                return depth

    return len(relative)


def diff_trees(path: Path, expected: Any, actual: Any) -> Iterator[DriftItem]:
    """All drift between two normalised trees, hash-first: records equal by
    strict equality are skipped without DeepDiff ever seeing them."""
    if not (isinstance(expected, dict) and isinstance(actual, dict)):
        if not strict_equal(expected, actual):
            yield from _record_items(path, expected, actual)
        return

    for key in expected.keys() - actual.keys():
        yield DriftItem((*path, key), "removed", expected[key], None)
    for key in actual.keys() - expected.keys():
        yield DriftItem((*path, key), "added", None, actual[key])
    for key in expected.keys() & actual.keys():
        if not strict_equal(expected[key], actual[key]):
            yield from _record_items((*path, key), expected[key], actual[key])


# --- ignore rules -------------------------------------------------------------------


def prune(
    tree: Any, rules: GlobSet, path: Path = ()
) -> tuple[Any, list[tuple[Path, int]]]:
    """A copy of ``tree`` without the parts the rules cover, and what was cut.

    Subtrees that no rule can reach are shared with the input, not copied.
    """
    cut: list[tuple[Path, int]] = []

    def walk(node: Any, states: frozenset[tuple[int, int]], here: Path) -> Any:
        if not states or not isinstance(node, dict):
            return node
        result = {}
        for key, value in node.items():
            after, matched = rules.step(states, key)
            if matched is not None:
                cut.append(((*here, key), matched))
                continue
            result[key] = walk(value, after, (*here, key))
        return result

    states = rules.start()
    for segment in path:
        states, matched = rules.step(states, segment)
        if matched is not None:
            return {}, [(path, matched)]

    return walk(tree, states, path), cut


def _count_hidden(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    cuts: list[tuple[Path, int]],
    rules: GlobSet,
) -> dict[str, int]:
    hidden: dict[str, int] = {}
    for cut_path, rule in dict(cuts).items():
        had, old = lookup(expected, cut_path)
        has, new = lookup(actual, cut_path)
        if had and has:
            count = sum(1 for _ in diff_trees(cut_path, old, new))
        else:
            count = int(had != has)
        text = rules.globs[rule].text
        hidden[text] = hidden.get(text, 0) + count

    return hidden


# --- pins ---------------------------------------------------------------------------


def _pin_item(
    path: Path, matcher: Matcher, found: bool, value: Any
) -> DriftItem | None:
    if matcher.check(found, value):
        return None
    if matcher.op == "absent":
        return DriftItem(path, "added", None, value)
    if not found:
        return DriftItem(path, "removed", matcher.describe(), None)
    if matcher.op == "equals":
        return DriftItem(path, _value_kind(matcher.arg, value), matcher.arg, value)

    return DriftItem(path, "changed", matcher.describe(), value)


def _under(path: Path, prefixes: set[Path]) -> bool:
    return any(path[: len(p)] == p for p in prefixes)


# --- the comparison -----------------------------------------------------------------


def _pruned_once(
    expected: Expected, section: str, wanted: Any, rules: GlobSet
) -> tuple[Any, list[tuple[Path, int]]]:
    """The expected side of a section under its rules: the same every scan."""
    if section not in expected.pruned:
        expected.pruned[section] = prune(wanted, rules, (section,))

    return expected.pruned[section]  # type: ignore[no-any-return]


def compare(
    expected: Expected, actual: Snapshot, *, explain: bool = False
) -> Comparison:
    """Every drift item of ``actual`` against ``expected``, and nothing that was
    not observed: parts of the snapshot that are unknown give no items."""
    rules = GlobSet.of(expected.ignore)
    items: list[DriftItem] = []
    cuts: list[tuple[Path, int]] = []
    pinned = [pin.path for pin in expected.pins if pin.hides]
    unobserved: list[str] = []

    for section, wanted in expected.tree.items():
        if section not in actual.data:
            unobserved.append(section)
            continue
        old, old_cuts = _pruned_once(expected, section, wanted, rules)
        new, new_cuts = prune(actual.data[section], rules, (section,))
        cuts += old_cuts + new_cuts
        for item in diff_trees((section,), old, new):
            if _under(item.path, expected.unknown):
                continue
            if actual.is_unknown(item.path):
                if item.kind != "added":
                    unobserved.append(item.path_text)
                continue
            if any(item.path[: len(p)] == p for p in pinned):
                continue
            items.append(item)

    for pin in expected.pins:
        if actual.is_unknown(pin.path) and not (
            pin.matcher.op == "absent" and actual.surely_absent(pin.path)
        ):
            unobserved.append(format_path(pin.path))
            continue
        found, value = lookup(actual.data, pin.path)
        failed = _pin_item(pin.path, pin.matcher, found, value)
        if failed is not None:
            items.append(failed)

    items.sort(key=lambda i: (i.path_text, i.kind))
    comparison = Comparison(items, unobserved=sorted(set(unobserved)))
    if explain:
        comparison.hidden = _count_hidden(expected.tree, actual.data, cuts, rules)
        for text in expected.ignore:
            comparison.hidden.setdefault(text, 0)

    return comparison
