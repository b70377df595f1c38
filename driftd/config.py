"""Settings: embedded defaults, a YAML config file, then command-line options.

Every problem in a config file is reported at once, each naming the file,
the line and the key, before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path as FsPath
from typing import Any

import yaml

from driftd import yamlfile
from driftd.baseline import DEFAULT_IGNORE
from driftd.errors import UserError
from driftd.paths import PathError, compile_glob
from driftd.snapshot import SECTIONS
from driftd.store import default_db_path

ENV_CONFIG = "DRIFTD_CONFIG"

DEFAULT_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/ssh/sshd_config",
    "/etc/hosts",
    "/etc/fstab",
    "/etc/crontab",
)


class ConfigError(UserError, ValueError):
    """A config file that cannot be used; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _default_socket() -> FsPath:
    if os.geteuid() == 0:
        return FsPath("/run/driftd/driftd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/driftd-{os.geteuid()}"  # noqa: S108

    return FsPath(runtime) / "driftd.sock"


def _default_baselines() -> FsPath:
    if os.geteuid() == 0:
        return FsPath("/etc/driftd/baselines")
    home = os.environ.get("XDG_CONFIG_HOME") or str(FsPath.home() / ".config")

    return FsPath(home) / "driftd" / "baselines"


@dataclass(frozen=True)
class Settings:
    """Everything a scan needs to know; each field is also a config file key.

    ``inventory`` None means this machine over the local connection.
    """

    inventory: str | None = None
    db: FsPath = field(default_factory=default_db_path)
    baselines: FsPath = field(default_factory=_default_baselines)
    sections: tuple[str, ...] = SECTIONS
    files: tuple[str, ...] = DEFAULT_FILES
    ignore: tuple[str, ...] = ()
    default_ignore: bool = True
    forks: int = 8
    timeout: int = 900
    task_timeout: int = 120
    gather_timeout: int = 30
    become: bool = False
    host_key_checking: bool = True
    interval: int = 3600
    group_intervals: Mapping[str, int] = field(default_factory=dict)
    jitter: float = 0.1
    reconcile: int = 30
    socket: FsPath = field(default_factory=_default_socket)

    @property
    def ignore_rules(self) -> tuple[str, ...]:
        base = DEFAULT_IGNORE if self.default_ignore else ()

        return (*base, *self.ignore)


_TYPES: dict[str, type] = {
    "inventory": str,
    "db": str,
    "baselines": str,
    "sections": list,
    "files": list,
    "ignore": list,
    "default_ignore": bool,
    "forks": int,
    "timeout": int,
    "task_timeout": int,
    "gather_timeout": int,
    "become": bool,
    "host_key_checking": bool,
    "interval": int,
    "group_intervals": dict,
    "jitter": float,
    "reconcile": int,
    "socket": str,
}

assert set(_TYPES) == {f.name for f in fields(Settings)}  # noqa: S101


def _lines(text: str) -> dict[str, int]:
    node = yamlfile.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}

    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_list(key: str, value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    unknown = [v for v in value if v not in SECTIONS]
    if key == "sections" and unknown:
        return f"unknown section {unknown[0]!r} (use {', '.join(SECTIONS)})"
    if key == "sections" and not value:
        return "must name at least one section"
    for rule in value if key == "ignore" else ():
        try:
            compile_glob(rule)
        except PathError as error:
            return f"{rule!r}: {error}"

    return None


A_YEAR = 366 * 86400  # the largest count of seconds any setting takes
LARGEST = {"forks": 1000}
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL


def _check_intervals(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must map inventory group names to seconds"
    for group, seconds in value.items():
        if not _whole(seconds) or seconds > A_YEAR:
            return f"{group}: must be a whole number of seconds from 1 to {A_YEAR}"

    return None


def _check(key: str, value: Any) -> str | None:
    """What is wrong with one value, or None."""
    wanted = _TYPES[key]
    if wanted is list:
        return _check_list(key, value)
    if wanted is dict:
        return _check_intervals(value)
    if wanted is int and not _whole(value):
        return "must be a whole number above 0"
    if wanted is int and value > LARGEST.get(key, A_YEAR):
        return f"must be at most {LARGEST.get(key, A_YEAR)}"
    if wanted is bool and not isinstance(value, bool):
        return "must be true or false"
    if wanted is str and not (isinstance(value, str) and value):
        return "must be a non-empty string"
    if key == "socket" and len(os.fsencode(value)) > SOCKET_PATH_MAX:
        return f"a socket path is at most {SOCKET_PATH_MAX} bytes long"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if wanted is float and not (number and 0 <= value <= 1):
        return "must be a number from 0 to 1"

    return None


def load_file(path: FsPath, base: Settings | None = None) -> Settings:
    """Settings from a YAML file over ``base``; ConfigError lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from error
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not UTF-8 text ({error.reason})"]) from error

    try:
        document = yamlfile.load(text)
    except yamlfile.YamlError as error:
        where = f"{path}:{error.line}" if error.line else str(path)
        raise ConfigError([f"{where}: {error.message}"]) from error

    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([f"{path}:1: the config must be a mapping of keys to values"])

    lines = _lines(text)
    problems = []
    values: dict[str, Any] = {}
    for key, value in document.items():
        where = f"{path}:{lines.get(str(key), 1)}: {key}"
        if key not in _TYPES:
            problems.append(
                f"{where}: unknown key (known: {', '.join(sorted(_TYPES))})"
            )
            continue
        problem = _check(key, value)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        values[key] = value
    if problems:
        raise ConfigError(problems)

    return apply(base or Settings(), values, relative_to=path.absolute().parent)


def apply(
    settings: Settings, values: dict[str, Any], relative_to: FsPath | None = None
) -> Settings:
    """``settings`` with ``values`` laid over them; paths made absolute, against
    ``relative_to`` (the config file's directory) or the working directory."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in ("db", "baselines", "socket"):
            path = FsPath(os.path.expanduser(value))
            if not path.is_absolute():
                path = (relative_to or FsPath.cwd()) / path
            changes[key] = path
        elif key == "inventory":
            changes[key] = _inventory_source(str(value), relative_to)
        elif key in ("sections", "files", "ignore"):
            changes[key] = tuple(value)
        elif key == "jitter":
            changes[key] = float(value)
        else:
            changes[key] = value

    return replace(settings, **changes)


def _inventory_source(value: str, relative_to: FsPath | None) -> str:
    """An inventory that names an existing file or directory, made absolute
    (Ansible runs elsewhere); anything else (``host1,host2,``) as it is."""
    path = FsPath(os.path.expanduser(value))
    if not path.is_absolute():
        path = (relative_to or FsPath.cwd()) / path
    try:
        exists = path.exists()
    except OSError:
        exists = False

    return str(path) if exists else value


def default_config_path() -> FsPath:
    """The config read when none is named: the daemon's, so that the CLI and
    the service agree without options."""
    if os.geteuid() == 0:
        return FsPath("/etc/driftd/driftd.yml")
    home = os.environ.get("XDG_CONFIG_HOME") or str(FsPath.home() / ".config")

    return FsPath(home) / "driftd" / "driftd.yml"


def load(config: str | None) -> Settings:
    """The settings in force: ``config``, else $DRIFTD_CONFIG (set but empty:
    no file), else the default config file if it exists, over the defaults."""
    source = config or os.environ.get(ENV_CONFIG)
    if source is None:
        default = default_config_path()
        source = str(default) if default.is_file() else ""
    if not source:
        return Settings()

    return load_file(FsPath(source))
