"""driftd's one path syntax, used in output, JSON, ignore rules, baselines and SQL.

A path names one place in a normalised snapshot: a section, then keys and list
indices. Plain keys are joined with dots (``facts.distribution``); keys holding
anything but letters, digits, ``_`` and ``-`` are written as JSON strings in
brackets (``files["/etc/ssh/sshd_config"].checksum``); list indices are
``[3]``. Globs use the same syntax: ``*`` and ``?`` inside one key, ``**`` for
any number of keys, and a glob that matches a path also covers everything
below it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from driftd.errors import UserError

Segment = str | int
Path = tuple[Segment, ...]

_BARE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_BARE_GLOB = re.compile(r"[A-Za-z0-9_*?][A-Za-z0-9_*?-]*")
_INDEX = re.compile(r"\[(\d+)\]")


class PathError(UserError, ValueError):
    """A path or glob that does not follow driftd's syntax."""


def _quote(key: str) -> str:
    safe = key.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in key)

    return json.dumps(key, ensure_ascii=not safe)


def format_path(path: Sequence[Segment]) -> str:
    """Return the canonical text of ``path``; ``parse_path`` reads it back."""
    parts: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _BARE.match(segment) and not segment.isdigit():
            parts.append(f".{segment}" if parts else segment)
        else:
            parts.append(f"[{_quote(segment)}]")

    return "".join(parts)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as error:
        raise PathError(f"unterminated quoted key at column {start + 1}") from error
    if not isinstance(value, str):
        raise PathError(f"a quoted key must be a string at column {start + 1}")

    return value, end


def _tokens(text: str, *, glob: bool) -> list[Segment]:
    if not text:
        raise PathError("empty path")

    bare = _BARE_GLOB if glob else re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
    segments: list[Segment] = []
    pos = 0
    while pos < len(text):
        if text.startswith('["', pos):
            key, end = _read_quoted(text, pos + 1)
            if not text.startswith("]", end):
                raise PathError(f"expected ']' at column {end + 1}")
            segments.append(key)
            pos = end + 1
        elif index := _INDEX.match(text, pos):
            segments.append(int(index.group(1)))
            pos = index.end()
        elif glob and text.startswith("[*]", pos):
            segments.append("*")
            pos += 3
        else:
            if segments:
                if text[pos] != ".":
                    raise PathError(f"expected '.' or '[' at column {pos + 1}")
                pos += 1
            word = bare.match(text, pos)
            if not word:
                raise PathError(f"expected a key at column {pos + 1}")
            segments.append(word.group(0))
            pos = word.end()

    return segments


def parse_path(text: str) -> Path:
    """Read a canonical path; raise PathError naming the column that is wrong."""
    return tuple(_tokens(text, glob=False))


def is_under(path: Path, prefix: Path) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it."""
    return path[: len(prefix)] == prefix


@dataclass(frozen=True)
class Glob:
    """A compiled path glob; it matches a path or any path below one it matches."""

    text: str
    parts: tuple[_Wild | None, ...]  # None stands for ``**``

    def matches(self, path: Path) -> bool:
        """Whether the glob covers ``path`` (the path itself or one of its parents)."""
        states = _closure(self.parts, {0})
        for segment in path:
            if len(self.parts) in states:
                return True
            states = _step(self.parts, states, segment)
            if not states:
                return False

        return len(self.parts) in states


def _segment_text(segment: Segment) -> str:
    return f"[{segment}]" if isinstance(segment, int) else segment


def _closure(parts: Sequence[_Wild | None], states: set[int]) -> set[int]:
    result = set(states)
    pending = list(states)
    while pending:
        state = pending.pop()
        if state < len(parts) and parts[state] is None and state + 1 not in result:
            result.add(state + 1)
            pending.append(state + 1)

    return result


def _step(
    parts: Sequence[_Wild | None], states: set[int], segment: Segment
) -> set[int]:
    text = _segment_text(segment)
    moved: set[int] = set()
    for state in states:
        if state >= len(parts):
            continue
        part = parts[state]
        if part is None:
            moved.add(state)
        elif part.fullmatch(text):
            moved.add(state + 1)

    return _closure(parts, moved)


@dataclass(frozen=True)
class _Wild:
    """One key's glob: ``*`` any run of characters, ``?`` any one character.

    Matched in time linear in pattern times key, whatever the stars:
    a regular expression would backtrack exponentially on ``*a*a*a*b``.
    """

    pattern: str

    def fullmatch(self, text: str) -> bool:
        pattern = self.pattern
        at = seen = 0
        star = -1
        while seen < len(text):
            if at < len(pattern) and pattern[at] in ("?", text[seen]):
                at += 1
                seen += 1
            elif at < len(pattern) and pattern[at] == "*":
                star, resume = at, seen
                at += 1
            elif star >= 0:
                resume += 1
                at, seen = star + 1, resume
            else:
                return False

        return pattern[at:].strip("*") == ""


def _compile_segment(segment: Segment) -> _Wild | None:
    if segment == "**":
        return None
    if isinstance(segment, int):
        return _Wild(f"[{segment}]")

    return _Wild(segment)


def compile_glob(text: str) -> Glob:
    """Compile a path glob; raise PathError naming the column that is wrong."""
    return Glob(text, tuple(_compile_segment(s) for s in _tokens(text, glob=True)))


@dataclass
class GlobSet:
    """Several globs walked together over a tree: the engine of ignore rules."""

    globs: tuple[Glob, ...]

    @classmethod
    def of(cls, texts: Iterable[str]) -> GlobSet:
        unique = dict.fromkeys(texts)

        return cls(tuple(compile_glob(t) for t in unique))

    def start(self) -> frozenset[tuple[int, int]]:
        """The walk state at the root of a tree."""
        return self._close({(i, 0) for i in range(len(self.globs))})

    def _close(self, states: set[tuple[int, int]]) -> frozenset[tuple[int, int]]:
        result: set[tuple[int, int]] = set()
        for rule, state in states:
            parts = self.globs[rule].parts
            result.update((rule, s) for s in _closure(parts, {state}))

        return frozenset(result)

    def step(
        self, states: frozenset[tuple[int, int]], segment: Segment
    ) -> tuple[frozenset[tuple[int, int]], int | None]:
        """Advance the walk by one key: the new states, and the rule that matched."""
        moved: set[tuple[int, int]] = set()
        for rule, state in states:
            parts = self.globs[rule].parts
            for after in _step(parts, {state}, segment):
                if after == len(parts):
                    return frozenset(), rule
                moved.add((rule, after))

        return frozenset(moved), None

    def first_match(self, path: Path) -> int | None:
        """The index of the first glob covering ``path``, or None."""
        for index, glob in enumerate(self.globs):
            if glob.matches(path):
                return index

        return None


def lookup(tree: Any, path: Path) -> tuple[bool, Any]:
    """Whether a tree of mappings holds a value at ``path``, and the value."""
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]

    return True, node
