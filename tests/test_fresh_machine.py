"""The README's set-up works on a fresh Debian 12 machine.

A pristine bookworm root (mmdebstrap minbase plus python3, git and
ca-certificates) gets only the host's apt sources and package-client
configuration, and a clean copy of this tree. `./hmmgpu setup` runs in it
with an empty cache and must build libvfio-user, the guest modules and tools
and the guest image from nothing. A host package that setup forgets to
install fails here, whatever this machine happens to have installed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hmmgpu.host.errors import CommandFailed
from hmmgpu.host.paths import REPO, Paths
from hmmgpu.host.pins import load_lock
from hmmgpu.host.provision import debian_mirror
from hmmgpu.host.shell import run
from hmmgpu.host.toolbox import isolated, safe_rmtree

# what the package clients (apt, pip) are configured with on this host
CLIENT_CONFIG = ["etc/apt/sources.list", "etc/apt/sources.list.d", "etc/apt/apt.conf.d",
                 "etc/apt/trusted.gpg.d", "etc/apt/keyrings", "etc/apt/preferences.d",
                 "etc/pip.conf", "etc/xdg/pip", "etc/resolv.conf",
                 "etc/ssl/certs/ca-certificates.crt"]
CLIENT_ENV = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPLIB2_CA_CERTS",
              "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
CACHE = "/root/.cache/hmmgpu"  # the default cache: what a new user gets
WORK = "/root/hmmgpu"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: mmdebstrap --mode=root and chroot")


@dataclass
class Fresh:
    root: Path
    log: Path
    bootstrap_s: float
    setup_s: float
    output: str

    @property
    def cache(self) -> Path:
        return self.root / CACHE.lstrip("/")

    def sh(self, command: str, timeout: float = 600) -> str:
        """Run a command in the fresh root (as a login of its root user)."""
        start = self.log.stat().st_size
        run(isolated(["sh", "-c", _chroot_script(self.root), "sh", command]), self.log,
            env=_client_env(), timeout=timeout)
        return self.log.read_text()[start:]


def _client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(CLIENT_ENV)}
    return {**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "TERM": "dumb"}


def _chroot_script(root: Path) -> str:
    # root, proc, sys and dev as a booted machine has them; all of it lives in
    # the private namespace of isolated() and goes away with it
    r = shlex.quote(str(root))
    return (f"mount --bind {r} {r} && mount -t proc proc {r}/proc && "
            f"mount -t sysfs sys {r}/sys && mount --rbind /dev {r}/dev && "
            f"exec chroot {r} /bin/bash -ec \"$1\"")


def _copy_tree_files(dest: Path) -> None:
    """The working tree as a clean clone has it: tracked and new files, not
    ignored ones (so uncommitted work is what gets tested)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Fresh]:
    base = tmp_path_factory.mktemp("fresh")
    root = base / "root"
    log = Paths.default().cache / "logs" / "fresh-machine.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    report = request.config.pluginmanager.getplugin("terminalreporter")
    try:
        t0 = time.monotonic()
        mirror = debian_mirror()
        aptopts = [f"--aptopt={f}" for f in sorted(Path("/etc/apt/apt.conf.d").glob("*"))]
        run(isolated(["mmdebstrap", "--variant=minbase", "--mode=root", *aptopts,
                      "--include=python3,git,ca-certificates", "bookworm", str(root),
                      f"deb {mirror} bookworm main"]), log, timeout=900)
        for rel in CLIENT_CONFIG:
            src, dst = Path("/") / rel, root / rel
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, symlinks=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.unlink(missing_ok=True)
                shutil.copy(src, dst)
        _copy_tree_files(root / WORK.lstrip("/"))
        bootstrap = time.monotonic() - t0
        fr = Fresh(root, log, bootstrap, 0.0, "")
        t0 = time.monotonic()
        try:
            fr.output = fr.sh(f"cd {WORK} && ./hmmgpu setup", timeout=2400)
        except CommandFailed as e:
            pytest.fail(f"./hmmgpu setup failed on a fresh machine: {e}")
        fr.setup_s = time.monotonic() - t0
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if report and capture:
            with capture.global_and_fixture_disabled():
                report.write_line(f"\nfresh machine: pristine root {bootstrap:.0f} s, cold "
                                  f"'./hmmgpu setup' {fr.setup_s:.0f} s (log: {log})")
        yield fr
    finally:
        safe_rmtree(base)


def test_setup_builds_libvfio_user_and_the_guest_side(fresh: Fresh) -> None:
    assert (fresh.cache / "libvfio-user-build/lib/libvfio-user.so.0").is_file()
    assert (fresh.cache / "libvfio-user-build/samples/gpio-pci-idio-16").is_file()
    built = {p.name for p in (fresh.cache / "guest").iterdir()}
    assert {"hmmgpu.ko", "test_hmm.ko", "hmm-tests", "gpu_smoke"} <= built
    assert (fresh.cache / "image" / "base.cpio").is_file()
    assert (fresh.cache / "qemu-plugin" / "hmmgpu_mmio.so").is_file()


def test_setup_installs_the_pins_or_says_why_not(fresh: Fresh) -> None:
    versions = json.loads((fresh.cache / "versions.json").read_text())
    lock = load_lock()
    expected = [p.name for p in lock.packages] + ["qemu (source)", "libvfio-user"]
    assert sorted(versions) == sorted(expected)
    for name, v in versions.items():
        if v["status"] == "pinned":
            assert v["installed"] == v["pinned"], name
        else:  # a fallback must have been said out loud
            assert v["reason"] and f"not pinned: {name}" in fresh.output, name
    table = fresh.sh(f"cd {WORK} && ./hmmgpu setup --print-versions")
    for p in lock.packages:
        assert p.name in table and p.version in table


def test_a_second_setup_is_a_no_op(fresh: Fresh) -> None:
    t0 = time.monotonic()
    out = fresh.sh(f"cd {WORK} && ./hmmgpu setup")
    assert "/7]" not in out, out  # no step ran again
    assert time.monotonic() - t0 < fresh.setup_s / 4
