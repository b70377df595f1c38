"""driftd's path syntax: one readable, unambiguous form, globs in the same form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftd.paths import PathError, compile_glob, format_path, parse_path

segments = st.one_of(st.text(min_size=1, max_size=12), st.integers(0, 999))


@given(st.text(min_size=1, max_size=10), st.lists(segments, max_size=5))
def test_any_path_reads_back_as_written(section: str, rest: list[str | int]) -> None:
    path = (section, *rest)

    assert parse_path(format_path(path)) == path


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (
            ("files", "/etc/ssh/sshd_config", "checksum"),
            'files["/etc/ssh/sshd_config"].checksum',
        ),
        (("packages", "openssh-server"), "packages.openssh-server"),
        (
            ("facts", "interfaces", "eth0.100", "mtu"),
            'facts.interfaces["eth0.100"].mtu',
        ),
        (("facts", "mounts", "/", "options"), 'facts.mounts["/"].options'),
        (("users", "a b", "shell"), 'users["a b"].shell'),
        (("facts", "list", 3), "facts.list[3]"),
        (("facts", "3"), 'facts["3"]'),
        (("facts", "key[0]"), 'facts["key[0]"]'),
    ],
)
def test_paths_read_plainly(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text
    assert parse_path(text) == path


@pytest.mark.parametrize(
    ("glob", "path", "covered"),
    [
        ("facts.date_time", ("facts", "date_time", "epoch"), True),
        (
            "facts.mounts.*.size_available",
            ("facts", "mounts", "/boot", "size_available"),
            True,
        ),
        (
            "facts.mounts.*.size_available",
            ("facts", "mounts", "/boot", "size_total"),
            False,
        ),
        ("facts.interfaces.veth*", ("facts", "interfaces", "veth1a2b", "mtu"), True),
        ("facts.interfaces.veth*", ("facts", "interfaces", "eth0", "mtu"), False),
        ("**.checksum", ("files", "/etc/hosts", "checksum"), True),
        ("files.**", ("files",), True),
        ('files["/etc/*"].mode', ("files", "/etc/hosts", "mode"), True),
        ("facts.env", ("facts", "environment"), False),
    ],
)
def test_a_glob_covers_what_it_matches_and_everything_below(
    glob: str, path: tuple[str, ...], covered: bool
) -> None:
    assert compile_glob(glob).matches(path) is covered


@pytest.mark.parametrize(
    "text", ["", "facts..a", 'files["unterminated', "facts.[", ".a"]
)
def test_malformed_paths_are_refused_with_the_column(text: str) -> None:
    with pytest.raises(PathError):
        parse_path(text)
