"""Pinned inputs: the exact Debian packages and sources hmmgpu is tested with.

hmmgpu.lock (TOML, at the top of the repository) names each input with its
version and sha256. `hmmgpu setup` installs exactly those. When the archive
no longer serves a pin, the pin's group (e.g. all kernel packages together,
so image and headers always match) falls back to the newest the archive has,
says so in one line, and records it in $CACHE/versions.json, which every run
directory gets a copy of. `--pins strict` stops instead; `--pins latest`
ignores the lock; `--update-lock` writes what is installed back to the lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SetupError
from .paths import REPO

LOCK_FILE = REPO / "hmmgpu.lock"
PIN_MODES = ("locked", "strict", "latest")


@dataclass
class Package:
    """A binary package: installed into the toolbox, or only downloaded."""
    name: str
    version: str
    sha256: str
    group: str
    fallback: str  # the apt spec used when the pin is gone, e.g. "qemu-system-x86/trixie-backports"
    install: bool = True


@dataclass
class Source:
    """A source package fetched with `apt-get source --download-only`."""
    name: str
    version: str
    suite: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256


@dataclass
class Lock:
    packages: list[Package]
    sources: list[Source]
    libvfio_user_tree: str  # tree_sha256 of subprojects/libvfio-user in the qemu source

    def package(self, name_prefix: str) -> Package:
        for p in self.packages:
            if p.name.startswith(name_prefix):
                return p
        raise SetupError(f"{LOCK_FILE.name} has no package {name_prefix}*")

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise SetupError(f"{LOCK_FILE.name} has no source package {name}")

    def key(self) -> str:
        """Changes whenever any pin changes: part of the setup steps' keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"package": [vars(p) for p in self.packages],
                "source": [vars(s) for s in self.sources],
                "libvfio-user": {"tree_sha256": self.libvfio_user_tree}}


def load_lock(path: Path = LOCK_FILE) -> Lock:
    try:
        data = tomllib.loads(path.read_text())
        return Lock([Package(**p) for p in data["package"]],
                    [Source(**s) for s in data["source"]],
                    data["libvfio-user"]["tree_sha256"])
    except FileNotFoundError as e:
        raise SetupError(f"{path} is missing: it is part of the repository") from e
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise SetupError(f"{path} is malformed ({e}): restore it with git checkout") from e


def _q(s: str) -> str:
    return json.dumps(s)  # a TOML basic string is a JSON string for our values


def dump_lock(lock: Lock) -> str:
    out = ["# hmmgpu.lock: the exact inputs hmmgpu is tested with (see docs/provisioning.md).",
           "# `hmmgpu setup` installs these; `hmmgpu setup --pins latest && hmmgpu setup",
           "# --update-lock` re-pins to the newest the archive serves.", ""]
    for p in lock.packages:
        out += ["[[package]]", f"name = {_q(p.name)}", f"version = {_q(p.version)}",
                f"sha256 = {_q(p.sha256)}", f"group = {_q(p.group)}",
                f"fallback = {_q(p.fallback)}", f"install = {str(p.install).lower()}", ""]
    for s in lock.sources:
        out += ["[[source]]", f"name = {_q(s.name)}", f"version = {_q(s.version)}",
                f"suite = {_q(s.suite)}", "[source.files]"]
        out += [f"{_q(f)} = {_q(h)}" for f, h in sorted(s.files.items())] + [""]
    out += ["[libvfio-user]", f"tree_sha256 = {_q(lock.libvfio_user_tree)}", ""]
    return "\n".join(out)


# ---- what the archive serves -------------------------------------------------------

def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse apt-cache show/showsrc output (RFC 822 stanzas; continuation lines
    are kept joined with newlines)."""
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, ""
        elif line[0] in " \t" and last:
            cur[last] += "\n" + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            cur[last] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def archive_packages(text: str) -> dict[tuple[str, str], str]:
    """(package, version) -> sha256 from `apt-cache show` output."""
    return {(s["Package"], s["Version"]): s.get("SHA256", "")
            for s in parse_stanzas(text) if "Package" in s and "Version" in s}


def archive_sources(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(source, version) -> {file: sha256} from `apt-cache showsrc` output."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for s in parse_stanzas(text):
        if "Package" not in s or "Version" not in s:
            continue
        files = {}
        for line in s.get("Checksums-Sha256", "").splitlines():
            parts = line.split()
            if len(parts) == 3:
                files[parts[2]] = parts[0]
        out[(s["Package"], s["Version"])] = files
    return out


@dataclass
class Choice:
    """What setup decided for one package: the pin, or its fallback and why."""
    name: str
    spec: str  # for apt-get: name=version, the fallback spec, or "" (comes as a dependency)
    pinned: str
    status: str  # "pinned", "fallback" or "latest"
    reason: str = ""


def choose_packages(lock: Lock, served: dict[tuple[str, str], str], mode: str) -> list[Choice]:
    """Decide, per group, between the pins and their fallbacks. A pin whose
    sha256 differs from the archive's is never used nor silently replaced."""
    if mode not in PIN_MODES:
        raise SetupError(f"unknown pin mode {mode!r}: use one of {', '.join(PIN_MODES)}")
    pkgs = lock.packages
    gone: dict[str, str] = {}
    for p in pkgs:
        have = served.get((p.name, p.version))
        if have is None:
            gone.setdefault(p.group, f"{p.name} {p.version} is no longer served")
        elif have != p.sha256:
            raise SetupError(f"the archive's {p.name} {p.version} has sha256 {have[:12]}..., "
                             f"{LOCK_FILE.name} pins {p.sha256[:12]}...: refusing it")
    if gone and mode == "strict":
        raise SetupError("pinned package not in the archive: " + "; ".join(gone.values())
                         + ". Run 'hmmgpu setup --pins locked' to fall back to the newest")
    out = []
    for p in pkgs:
        if mode == "latest":
            out.append(Choice(p.name, p.fallback, p.version, "latest", "--pins latest"))
        elif p.group in gone:
            out.append(Choice(p.name, p.fallback, p.version, "fallback", gone[p.group]))
        else:
            out.append(Choice(p.name, f"{p.name}={p.version}", p.version, "pinned"))
    return out


def installed_name(lock: Lock, name: str, abi: str) -> str:
    """The name a locked kernel package has after a fallback to another kernel
    ABI (linux-image-7.3.4+deb13-cloud-amd64 -> linux-image-7.3.5+deb13-cloud-amd64)."""
    locked = lock.package("linux-image-").name.removeprefix("linux-image-")
    return name.replace(locked.removesuffix("-cloud-amd64"), abi.removesuffix("-cloud-amd64"))


def source_order(pin: Source, served: dict[tuple[str, str], dict[str, str]],
                 mode: str) -> list[tuple[str, str]]:
    """The versions of a source package to try downloading, in order, each with
    its status: the pin first (unless --pins latest), then, unless strict,
    newest first. A pin whose files differ from the archive's is refused."""
    have = served.get((pin.name, pin.version))
    if have is not None and have != pin.files:
        raise SetupError(f"the archive's {pin.name} {pin.version} source differs from "
                         f"{LOCK_FILE.name}'s sha256s: refusing it")
    versions = sorted((v for (n, v) in served if n == pin.name), key=_debver, reverse=True)
    order = []
    if mode != "latest" and have is not None:
        order.append((pin.version, "pinned"))
    if mode != "strict":
        status = "latest" if mode == "latest" else "fallback"
        order += [(v, status) for v in versions if v != pin.version or mode == "latest"]
    return order


def _order(c: str) -> int:
    """dpkg's character order: '~' first, then the end of the string, digits,
    letters, everything else."""
    if c == "~":
        return -1
    if c == "" or c.isdigit():
        return 0
    return ord(c) if c.isalpha() else ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """Compare two upstream versions or revisions the way dpkg does."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return ca - cb
            i, j = i + 1, j + 1
        da = db = ""
        while i < len(a) and a[i].isdigit():
            da, i = da + a[i], i + 1
        while j < len(b) and b[j].isdigit():
            db, j = db + b[j], j + 1
        if int(da or 0) != int(db or 0):
            return int(da or 0) - int(db or 0)
    return 0


def debver_cmp(a: str, b: str) -> int:
    """dpkg --compare-versions as a cmp function: epoch, upstream, revision."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch), upstream, rev
    (ea, ua, ra), (eb, ub, rb) = split(a), split(b)
    return (ea - eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


_debver = functools.cmp_to_key(debver_cmp)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- what was installed -------------------------------------------------------------

class Versions:
    """$CACHE/versions.json: per input, what is pinned, what is installed, and
    whether that is the pin or a fallback (with the reason)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError:
                self.data = {}

    def record(self, name: str, pinned: str, installed: str, status: str,
               reason: str = "", **extra: Any) -> None:
        if status == "pinned" and installed != pinned:
            status, reason = "fallback", reason or "apt installed another version"
        self.data[name] = {"pinned": pinned, "installed": installed, "status": status,
                           "reason": reason, **extra}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def drifted(self) -> list[str]:
        return [n for n, v in self.data.items() if v["status"] != "pinned"]

    def table(self, lock: Lock) -> str:
        names = [p.name for p in lock.packages] + [s.name + " (source)" for s in lock.sources]
        names += ["libvfio-user"] + [n for n in self.data if n not in names
                                     and n != "libvfio-user"]
        pinned = {p.name: p.version for p in lock.packages}
        pinned |= {s.name + " (source)": s.version for s in lock.sources}
        pinned["libvfio-user"] = "tree " + lock.libvfio_user_tree[:16]
        rows = [("input", "pinned", "installed", "status")]
        for n in names:
            v = self.data.get(n, {})
            got = v.get("installed", "not installed")
            if n == "libvfio-user" and n in self.data:
                got = "tree " + got[:16]
            rows.append((n, pinned.get(n, "-"), got,
                         v.get("status", "-") + (f" ({v['reason']})" if v.get("reason") else "")))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}"
                         for r in rows)


def tree_sha256(path: Path) -> str:
    """sha256 over every file's relative path and contents under `path`."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() or q.is_symlink()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(str(p.readlink()).encode() if p.is_symlink() else p.read_bytes())
    return h.hexdigest()
