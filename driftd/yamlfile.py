"""Strict YAML for files people edit: baselines and the config.

Safe tags only, no duplicate keys (YAML says a later key silently wins, which
hides a typo), no anchors and aliases (a few lines of aliases can stand for
billions of values), and text that is valid UTF-8. Every refusal names the
line.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from driftd.errors import UserError

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(UserError, ValueError):
    """A file that is not acceptable YAML; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


def _check_nodes(root: yaml.Node) -> None:
    """Refuse aliases, duplicate keys and values JSON cannot hold, before anything
    is constructed. Dates stay the text they were written as: facts hold
    dates as text, so ``bios_date: 2024-01-01`` means that text."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise YamlError(
                f"the anchor at line {_line(node)} is used again through an alias: "
                "anchors and aliases are not accepted",
                _line(node),
            )
        seen.add(id(node))
        if node.tag == _TAG + "timestamp":
            node.tag = _TAG + "str"
        elif node.tag not in PLAIN_TAGS:
            tag = node.tag.removeprefix(_TAG)
            raise YamlError(f"values of type {tag!r} are not accepted", _line(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    marker = (key.tag, key.value)
                    if marker in keys:
                        raise YamlError(
                            f"key {key.value!r} given twice (also line {keys[marker]})",
                            _line(key),
                        )
                    keys[marker] = _line(key)
                stack += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


class _StrictLoader(_BASE):  # type: ignore[valid-type,misc]
    def construct_document(self, node: yaml.Node) -> Any:
        _check_nodes(node)

        return super().construct_document(node)


def _not_utf8(text: str) -> None:
    """Text read with ``surrogateescape`` holds surrogates where bytes were bad."""
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            line = text.count("\n", 0, index) + 1
            raise YamlError("not valid UTF-8 text", line)


def load(text: str) -> Any:
    """The document in ``text``; YamlError for anything refused."""
    _not_utf8(text)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark is not None else None
        raise YamlError(f"not valid YAML: {problem}", line) from error
    except RecursionError:
        raise YamlError("nested too deeply") from None


@functools.lru_cache(maxsize=4)
def compose(text: str) -> yaml.Node | None:
    """The node tree of ``text`` (for line numbers), or None if it does not parse.

    Cached: a file with many problems is composed once, not once per problem.
    """
    try:
        return yaml.compose(text, Loader=_BASE)
    except (yaml.YAMLError, RecursionError, UnicodeError):
        return None
