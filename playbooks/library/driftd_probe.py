#!/usr/bin/python
"""driftd_probe: read-only inventory of packages, local accounts, files and ports.

One module run per host gathers what would otherwise take several modules and
round trips. Each section reports its own error, so one that cannot be read
leaves the others intact. Nothing on the host is changed.
"""

import base64
import grp
import hashlib
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: driftd_probe
short_description: Read-only inventory for driftd
options:
  sections:
    description: Sections to gather (packages, users, groups, files, ports).
    type: list
    elements: str
    default: [packages, users, groups, files, ports]
  files:
    description: Paths whose metadata and SHA-256 checksum are reported.
    type: list
    elements: str
    default: []
"""

DPKG_FORMAT = "${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Status}\\n"
RPM_FORMAT = "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"
CHUNK = 1024 * 1024


def run(argv):
    result = subprocess.run(argv, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            "%s exited %d: %s"
            % (
                argv[0],
                result.returncode,
                result.stderr.decode("utf-8", "replace")[:500],
            )
        )
    return result.stdout.decode("utf-8", "surrogateescape")


def packages():
    found = {}
    if shutil.which("dpkg-query"):
        for line in run(["dpkg-query", "-W", "-f", DPKG_FORMAT]).splitlines():
            fields = line.split("\t")
            if len(fields) == 4 and fields[3] == "installed":
                found.setdefault(fields[0], []).append(fields[1])
        return "dpkg", found
    if shutil.which("rpm"):
        for line in run(["rpm", "-qa", "--qf", RPM_FORMAT]).splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and not fields[0].startswith("gpg-pubkey"):
                version = fields[1][2:] if fields[1].startswith("0:") else fields[1]
                found.setdefault(fields[0], []).append(version)
        return "rpm", found
    return None, None


def read_colon_file(path, width):
    rows = []
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            if not line or line.startswith(("#", "+", "-")):
                continue
            fields = line.split(":")
            if len(fields) >= width:
                rows.append(fields)
    return rows


def number(text):
    try:
        return int(text)
    except ValueError:
        return text


def users():
    return {
        f[0]: {
            "uid": number(f[2]),
            "gid": number(f[3]),
            "gecos": f[4],
            "home": f[5],
            "shell": f[6],
        }
        for f in read_colon_file("/etc/passwd", 7)
    }


def groups():
    return {
        f[0]: {"gid": number(f[2]), "members": sorted(m for m in f[3].split(",") if m)}
        for f in read_colon_file("/etc/group", 4)
    }


def owner(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def checksum(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def one_file(path):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as error:
        return {"exists": True, "error": str(error)}
    mode = info.st_mode
    entry = {
        "exists": True,
        "type": "link"
        if stat.S_ISLNK(mode)
        else "directory"
        if stat.S_ISDIR(mode)
        else "file"
        if stat.S_ISREG(mode)
        else "other",
        "mode": "%04o" % stat.S_IMODE(mode),
        "owner": owner(info.st_uid),
        "group": group(info.st_gid),
    }
    if stat.S_ISLNK(mode):
        entry["target"] = os.readlink(path)
    if stat.S_ISREG(mode):
        entry["size"] = info.st_size
        entry["checksum"] = checksum(path)
    return entry


def files(paths):
    return {path: one_file(path) for path in paths}


def _address(hex_address):
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(
            socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0])
        )
    words = struct.unpack(">4I", raw)
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def ports():
    if not os.path.exists("/proc/net/tcp"):
        raise RuntimeError(
            "listening ports are read from /proc/net, which this host lacks"
        )
    found = {}
    for proto, listening in (
        ("tcp", "0A"),
        ("tcp6", "0A"),
        ("udp", "07"),
        ("udp6", "07"),
    ):
        try:
            with open("/proc/net/" + proto) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != listening:
                continue
            if proto.startswith("udp") and int(fields[2].split(":")[1], 16):
                continue  # a connected UDP socket is a client, not a listener
            address, port = fields[1].split(":")
            text = _address(address)
            key = "%s %s" % (
                proto[:3],
                ("[%s]:%d" if ":" in text else "%s:%d") % (text, int(port, 16)),
            )
            found[key] = {"proto": proto[:3], "address": text, "port": int(port, 16)}
    return found


BYTES_MARK = "__driftd_bytes__"


def _transportable(text):
    """Text that Ansible will carry: not-UTF-8 bytes travel as base64, marked.

    Text that happens to start with the mark travels marked too, so that
    every marked string on the other side is one of ours.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if not text.startswith(BYTES_MARK):
            return text
    raw = text.encode("utf-8", "surrogateescape")
    return BYTES_MARK + ":" + base64.b64encode(raw).decode("ascii")


def transportable(value):
    if isinstance(value, dict):
        return {_transportable(k): transportable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [transportable(v) for v in value]
    if isinstance(value, str):
        return _transportable(value)
    return value


def main():
    module = AnsibleModule(
        argument_spec={
            "sections": {
                "type": "list",
                "elements": "str",
                "default": ["packages", "users", "groups", "files", "ports"],
            },
            "files": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    wanted = module.params["sections"]
    readers = {
        "users": users,
        "groups": groups,
        "files": lambda: files(module.params["files"]),
        "ports": ports,
    }
    result = {}
    errors = {}
    for section in wanted:
        try:
            if section == "packages":
                manager, found = packages()
                if manager is None:
                    errors[section] = "unsupported"
                else:
                    result[section] = found
                    result["package_manager"] = manager
            elif section in readers:
                result[section] = readers[section]()
        except Exception as error:  # one broken section must not lose the others
            errors[section] = str(error)
    module.exit_json(changed=False, driftd=transportable(result), driftd_errors=errors)


if __name__ == "__main__":
    main()
