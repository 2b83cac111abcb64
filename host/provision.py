"""`hmmgpu setup`: provision everything a lab needs, idempotently.

Steps run in order; each leaves a stamp holding the key of its inputs, so a
second run skips what is current and redoes what changed (the guest builds are
keyed by a hash of guest/). A file lock makes racing runs wait for each other.
Output of every step goes to $CACHE/logs/setup-<step>.log; the terminal shows
one progress line per step.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandFailed, SetupError
from .kbuild import (
    GUEST_TOOLS,
    hmm_tests_script,
    modules_script,
    prepare_sources,
    tools_script,
    tree_hash,
)
from .paths import REPO, Paths
from .pins import (
    LOCK_FILE,
    Lock,
    Package,
    Source,
    Versions,
    archive_packages,
    archive_sources,
    choose_packages,
    installed_name,
    load_lock,
    sha256_file,
    source_order,
    tree_sha256,
)
from .shell import run
from .toolbox import Toolbox, isolated, safe_rmtree

# What the host itself runs; everything else runs in the toolbox. Installed
# without recommends, so each build's requirements are listed explicitly.
HOST_PACKAGES = [
    "mmdebstrap",                       # makes the toolbox
    "meson", "ninja-build", "pkg-config",  # libvfio-user's build
    "gcc", "libc6-dev",                 # its compiler; gcc alone brings no crt1.o/libc headers
    "libjson-c-dev", "libcmocka-dev",   # its dependencies (cmocka: meson.build needs it always)
    "xz-utils",                         # unpacking the .orig.tar.xz and linux-source
    "perl",                             # checkpatch.pl in the tests (perl-base lacks modules)
    "make",                             # our modules against a --kernel tree built with this gcc
]

# The rest of the toolbox: trixie's own packages, for building the guest
# side. QEMU, seabios and the kernel come from hmmgpu.lock (host/pins.py).
TOOLBOX_PACKAGES = [
    "gcc", "libc6-dev", "make",
    "libglib2.0-dev", "pkg-config",  # the TCG plugin (qemu-plugin.h includes glib.h)
    "initramfs-tools", "kmod", "busybox-static", "cpio", "xz-utils", "dropbear-bin",
    "virtiofsd",  # --share: a host directory in the guest
]
MIN_FREE_BYTES = 3 << 30

SELFTEST_FILES = [
    "lib/test_hmm.c", "lib/test_hmm_uapi.h", "mm/gup_test.c", "mm/gup_test.h",
    "tools/testing/selftests/mm/*", "tools/testing/selftests/kselftest*",
    "scripts/checkpatch.pl", "scripts/spelling.txt", "scripts/const_structs.checkpatch",
    "tools/docs/kernel-doc", "tools/lib/python/*",  # the tests check the driver's kernel-doc
]


def say(msg: str) -> None:
    print(f"[hmmgpu setup] {msg}", file=sys.stderr, flush=True)


def debian_mirror() -> str:
    """The Debian archive URI the host's apt already uses."""
    uris: list[str] = []
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for line in Path(f).read_text().splitlines():
            if line.startswith("URIs:"):
                uris += line.split()[1:]
    for f in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(f):
            for line in Path(f).read_text().splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
                if m:
                    uris.append(m.group(1))
    for u in uris:
        if "security" not in u and "debian" in u:
            return u.rstrip("/")
    raise SetupError("no Debian mirror in the host's apt sources (/etc/apt/sources.list*): "
                     "configure apt first")


@dataclass
class Step:
    name: str
    key: Callable[[], str]
    action: Callable[[Path], None]


class Provisioner:
    def __init__(self, paths: Paths | None = None, verbose: bool = False,
                 pins: str | None = None) -> None:
        self.paths = paths or Paths.default()
        self.tb = Toolbox(self.paths.toolbox)
        self.verbose = verbose
        self.logs = self.paths.cache / "logs"
        self.pins = pins or os.environ.get("HMMGPU_PINS") or "locked"
        self.lock = load_lock()
        self.versions = Versions(self.paths.versions)

    # ---- the plan ------------------------------------------------------------

    def steps(self) -> list[Step]:
        return [
            Step("host-packages", lambda: ",".join(HOST_PACKAGES), self.host_packages),
            Step("toolbox", lambda: ",".join(TOOLBOX_PACKAGES) + self.lock.key() + self.pins,
                 self.toolbox),
            Step("sources", lambda: "5" + ",".join(SELFTEST_FILES), self.sources),
            Step("libvfio-user", lambda: "3-release", self.libvfio_user),
            Step("guest-build", lambda: self.tb_kernel() + tree_hash(REPO / "guest")
                 + ",".join(GUEST_TOOLS),
                 self.guest_build),
            Step("guest-image", lambda: self.tb_kernel() + tree_hash(REPO / "guest" / "image")
                 + tree_hash(REPO / "host" / "image.py"), self.guest_image),
            Step("qemu-plugin", lambda: tree_hash(REPO / "qemu-plugin"), self.qemu_plugin),
        ]

    def tb_kernel(self) -> str:
        try:
            return self.tb.kernel_version
        except SetupError:
            return "?"

    def keys(self, steps: list[Step]) -> list[str]:
        """Each step's key covers its own inputs and every earlier step's, so a
        redone step redoes all that follow it."""
        out, acc = [], ""
        for s in steps:
            acc = hashlib.sha256((acc + "\0" + s.key()).encode()).hexdigest()[:16]
            out.append(acc)
        return out

    def is_current(self) -> bool:
        steps = self.steps()
        return all(self._stamp(s).exists() and self._stamp(s).read_text() == k
                   for s, k in zip(steps, self.keys(steps), strict=True))

    def _stamp(self, step: Step) -> Path:
        return self.paths.stamps / step.name

    def ensure(self) -> None:
        """Provision what is missing or stale; a no-op when everything is current."""
        self.paths.cache.mkdir(parents=True, exist_ok=True)
        with open(self.paths.lock, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"another setup holds {self.paths.lock}; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            steps = self.steps()
            for i, step in enumerate(steps, 1):
                stamp = self._stamp(step)
                key = self.keys(steps)[i - 1]
                if stamp.exists() and stamp.read_text() == key:
                    continue
                # an interrupted step must not look done on the next run
                stamp.unlink(missing_ok=True)
                logfile = self.logs / f"setup-{step.name}.log"
                logfile.parent.mkdir(parents=True, exist_ok=True)
                logfile.write_text("")
                say(f"[{i}/{len(steps)}] {step.name} ... (log: {logfile})")
                t0 = time.monotonic()
                try:
                    step.action(logfile)
                except CommandFailed as e:
                    raise SetupError(f"step '{step.name}' failed: {e}") from e
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.write_text(key)
                say(f"[{i}/{len(steps)}] {step.name} done in {time.monotonic() - t0:.0f} s")
            for name in self.versions.drifted():
                v = self.versions.data[name]
                say(f"not pinned: {name} {v['installed']} ({v['status']}: {v['reason']}); "
                    f"see 'hmmgpu setup --print-versions'")

    # ---- steps ------------------------------------------------------------------

    def check_prerequisites(self) -> None:
        free = shutil.disk_usage(self.paths.cache).free
        if free < MIN_FREE_BYTES:
            raise SetupError(f"only {free >> 20} MiB free under {self.paths.cache}; "
                             f"hmmgpu needs {MIN_FREE_BYTES >> 30} GiB: free space or set "
                             "HMMGPU_CACHE to a larger disk")
        if os.geteuid() != 0 and not _userns_works():
            raise SetupError("provisioning needs root or unprivileged user namespaces "
                             "(sysctl kernel.unprivileged_userns_clone=1): run as root")

    def host_packages(self, logfile: Path) -> None:
        self.check_prerequisites()
        missing = [p for p in HOST_PACKAGES if not _dpkg_installed(p)]
        if not missing:
            return
        if os.geteuid() != 0:
            raise SetupError("missing host packages; as root run: apt-get install "
                             + " ".join(missing))
        say(f"installing host packages: {' '.join(missing)}")
        try:
            run(["apt-get", "update"], logfile, timeout=600)
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], logfile,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=1200)
        except CommandFailed as e:
            raise SetupError("could not install host packages from the Debian archive "
                             "(is the package registry reachable?)", logfile) from e

    def toolbox(self, logfile: Path) -> None:
        """A trixie root by mmdebstrap, then the pinned packages (or their
        reported fallbacks) installed into it by exact version."""
        mirror = debian_mirror()
        root = self.paths.toolbox
        tmp = root.with_name("toolbox.tmp")
        safe_rmtree(tmp)
        mode = "root" if os.geteuid() == 0 else "unshare"
        try:
            # the lists stay, for choosing the pinned versions below
            cmd = ["mmdebstrap", "--variant=apt", f"--mode={mode}", "--skip=cleanup/apt/lists",
                   "--aptopt=Apt::Install-Recommends \"false\"",
                   "--include=" + ",".join(TOOLBOX_PACKAGES), "trixie", str(tmp),
                   f"deb {mirror} trixie main", f"deb {mirror} trixie-backports main"]
            # as root, mmdebstrap's binds live in a namespace that dies with setup
            run(isolated(cmd) if mode == "root" else cmd, logfile, timeout=1800)
        except CommandFailed as e:
            safe_rmtree(tmp)
            raise SetupError("mmdebstrap could not build the trixie toolbox (is the Debian "
                             "archive reachable? is there disk space?)", logfile) from e
        tb = Toolbox(tmp)
        names = " ".join(p.name for p in self.lock.packages)
        tb.chroot(f"for p in {names}; do apt-cache show $p || true; done > /tmp/archive.txt",
                  logfile)
        served = archive_packages((tmp / "tmp" / "archive.txt").read_text())
        choices = choose_packages(self.lock, served, self.pins)
        for c in choices:
            if c.status == "fallback":
                say(f"pin not served: {c.reason}; using the newest instead "
                    f"({c.spec or 'as a dependency'})")
        install = {p.name for p in self.lock.packages if p.install}
        specs = [c.spec for c in choices if c.spec and c.name in install]
        tb.chroot("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                  + " ".join(f"'{s}'" for s in specs)
                  + " && dpkg-query -W -f '${Package}\\t${Version}\\n' > /tmp/installed.txt",
                  logfile)
        installed = dict(line.split("\t") for line in
                         (tmp / "tmp" / "installed.txt").read_text().splitlines() if "\t" in line)
        abi = tb.kernel_version
        self.versions.data = {}
        for c in choices:
            name = installed_name(self.lock, c.name, abi) if c.status != "pinned" else c.name
            if c.name in install:
                got = installed.get(name, "missing")
                self.versions.record(c.name, c.pinned, f"{name} {got}" if name != c.name else got,
                                     c.status, c.reason)
            else:  # fetched by the sources step, to match the kernel installed here
                spec = c.spec.format(kernel_majmin=".".join(abi.split(".")[:2]),
                                     kernel_version=installed[f"linux-image-{abi}"])
                self.versions.data[c.name] = {"pinned": c.pinned, "installed": "not fetched yet",
                                              "status": c.status, "reason": c.reason,
                                              "spec": spec}
        self.versions.save()
        safe_rmtree(root)
        tmp.rename(root)
        say(f"toolbox ready: Linux {self.tb.kernel_version}, QEMU "
            f"{installed.get('qemu-system-x86', '?')} (versions: {self.paths.versions})")

    def sources(self, logfile: Path) -> None:
        """Fetch Debian's qemu source package (for libvfio-user and qemu-plugin.h)
        and linux-source (test_hmm.c, hmm-tests), keeping only what we use."""
        mirror = debian_mirror()
        kver = self.tb.kernel_version
        majmin = ".".join(kver.split(".")[:2])
        dl = self.paths.toolbox / "build" / "dl"
        shutil.rmtree(dl, ignore_errors=True)
        dl.mkdir(parents=True)
        qemu = self.lock.source("qemu")
        # sid's Release file can be past its Valid-Until on a snapshot mirror;
        # the source packages themselves are still verified by hash.
        src_list = "/etc/apt/sources.list.d/hmmgpu-src.list"
        self.tb.chroot(f"""
echo 'deb-src [check-valid-until=no] {mirror} {qemu.suite} main' > {src_list}
apt-get update
apt-cache showsrc qemu > /tmp/showsrc.txt
""", logfile)
        served = archive_sources((self.paths.toolbox / "tmp" / "showsrc.txt").read_text())
        got = None
        for version, status in source_order(qemu, served, self.pins):
            try:
                self.tb.chroot(f"cd /build/dl && rm -f qemu_* && "
                               f"apt-get source --download-only 'qemu={version}'", logfile)
            except CommandFailed:
                say(f"qemu source {version} could not be downloaded")
                continue
            got = (version, status)
            break
        if got is None:
            raise SetupError(f"no qemu source package could be downloaded (pinned {qemu.version}"
                             + (", --pins strict" if self.pins == "strict" else "") + ")", logfile)
        if got[1] == "pinned":
            for f, h in qemu.files.items():
                if sha256_file(dl / f) != h:
                    raise SetupError(f"{f} does not match its sha256 in {LOCK_FILE.name}", logfile)
        else:
            say(f"pinned qemu source {qemu.version} not available; using {got[0]}")
        self.versions.record("qemu (source)", qemu.version, got[0], got[1],
                             "" if got[1] == "pinned" else f"{qemu.version} could not be fetched")
        src_pin = self.lock.package("linux-source-")
        spec = self.versions.data[src_pin.name]["spec"]
        self.tb.chroot(f"cd /build/dl && apt-get download '{spec}'", logfile)
        deb = sorted(dl.glob("linux-source-*.deb"))[-1]
        status = self.versions.data[src_pin.name]["status"]
        if status == "pinned" and sha256_file(deb) != src_pin.sha256:
            raise SetupError(f"{deb.name} does not match its sha256 in {LOCK_FILE.name}", logfile)
        self.versions.record(src_pin.name, src_pin.version, spec.partition("=")[2], status,
                             self.versions.data[src_pin.name]["reason"], spec=spec)

        srcs = self.paths.sources
        shutil.rmtree(srcs, ignore_errors=True)
        srcs.mkdir(parents=True)
        orig = sorted(dl.glob("qemu_*.orig.tar.xz"))[-1]
        top = orig.name.removeprefix("qemu_").split("+")[0].removesuffix(".orig.tar.xz")
        run(["tar", "-xJf", orig, "-C", srcs, "--wildcards",
             f"qemu-{top}/subprojects/libvfio-user/*", f"qemu-{top}/include/qemu/qemu-plugin.h",
             f"qemu-{top}/VERSION"], logfile)
        (srcs / f"qemu-{top}").rename(self.paths.qemu_src)
        (self.paths.qemu_src / "subprojects" / "libvfio-user").rename(self.paths.libvfio_user_src)
        tree = tree_sha256(self.paths.libvfio_user_src)
        if tree == self.lock.libvfio_user_tree:
            self.versions.record("libvfio-user", self.lock.libvfio_user_tree, tree, "pinned")
        elif got[1] == "pinned":
            raise SetupError(f"libvfio-user in qemu {got[0]} differs from {LOCK_FILE.name}",
                             logfile)
        else:
            self.versions.record("libvfio-user", self.lock.libvfio_user_tree, tree, got[1],
                                 f"from qemu {got[0]}")
        self.versions.save()
        tarball = f"./usr/src/linux-source-{majmin}.tar.xz"
        extract = (f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO '{tarball}' | "
                   f"tar -xJ -C '{srcs}' --wildcards "
                   + " ".join(f"'linux-source-{majmin}/{f}'" for f in SELFTEST_FILES))
        run(["sh", "-c", extract], logfile, timeout=900)
        (srcs / f"linux-source-{majmin}").rename(self.paths.linux_src)
        shutil.rmtree(dl)

    def libvfio_user(self, logfile: Path) -> None:
        build = self.paths.libvfio_user_build
        shutil.rmtree(build, ignore_errors=True)
        # A release build: the debug build abort()s on API checks that race
        # benignly with a multi-threaded device (e.g. DMA helpers called just
        # as a quiesced DMA_MAP completes).
        run(["meson", "setup", build, self.paths.libvfio_user_src, "-Dwerror=false",
             "-Dbuildtype=release", "-Ddebug-logs=disabled"], logfile)
        run(["ninja", "-C", build], logfile, timeout=900)
        if not self.paths.libvfio_user.exists() or not self.paths.gpio_sample.exists():
            raise SetupError("libvfio-user built but library or sample is missing", logfile)

    def guest_build(self, logfile: Path) -> None:
        """Build in the toolbox: our guest modules, the reference test_hmm.ko and
        the static hmm-tests binary."""
        work = self.paths.toolbox / "build" / "hmmgpu"
        prepare_sources(work, self.paths.linux_src)
        shutil.copytree(self.paths.linux_src, work / "linux")
        w, o = "/build/hmmgpu", "/build/hmmgpu/out"
        script = (modules_script(self.tb.headers, w) + hmm_tests_script(f"{w}/linux", o)
                  + tools_script(w, o))
        self.tb.chroot(script, logfile, timeout=1800)
        out = self.paths.artifacts
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for ko in [*work.glob("guest/*/*.ko"), work / "test_hmm" / "test_hmm.ko"]:
            shutil.copy(ko, out / ko.name)
        for tool in (work / "out").iterdir():
            shutil.copy(tool, out / tool.name)
        say("built: " + ", ".join(sorted(p.name for p in out.iterdir())))

    def qemu_plugin(self, logfile: Path) -> None:
        """Build the TCG plugin in the toolbox, against the qemu-plugin.h of the
        QEMU source package (see qemu-plugin/README.md on the API version)."""
        work = self.paths.toolbox / "build" / "qemu-plugin"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(REPO / "qemu-plugin", work,
                        ignore=shutil.ignore_patterns("*.so", "*.o"))
        shutil.copy(self.paths.qemu_src / "include" / "qemu" / "qemu-plugin.h",
                    work / "qemu-plugin.h")
        self.tb.chroot("make -C /build/qemu-plugin QEMU_INCLUDE=/build/qemu-plugin", logfile)
        out = self.paths.qemu_plugin
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "hmmgpu_mmio.so", out)
        say(f"built: {out.name}")

    def guest_image(self, logfile: Path) -> None:
        from .image import build_base_image
        build_base_image(self.tb, REPO / "guest" / "image", self.paths.image, logfile)


def _dpkg_installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                       text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def _userns_works() -> bool:
    try:
        return subprocess.run(["unshare", "-r", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def lock_from_installed(paths: Paths) -> Lock:
    """A lock that pins exactly what `hmmgpu setup` installed last, with the
    archive's sha256s (for `hmmgpu setup --update-lock`)."""
    old = load_lock()
    versions = Versions(paths.versions)
    tb = Toolbox(paths.toolbox)
    if not versions.data or not paths.libvfio_user_src.exists():
        raise SetupError("nothing installed to pin: run 'hmmgpu setup --pins latest' first")
    abi = tb.kernel_version
    names = {p.name: installed_name(old, p.name, abi) for p in old.packages}
    names[old.package("linux-source-").name] = "linux-source-" + ".".join(abi.split(".")[:2])
    logfile = paths.cache / "logs" / "update-lock.log"
    logfile.write_text("")
    tb.chroot("for p in " + " ".join(names.values()) + "; do apt-cache show $p; done"
              " > /tmp/archive.txt; dpkg-query -W -f '${Package}\\t${Version}\\n'"
              " > /tmp/installed.txt; apt-cache showsrc qemu > /tmp/showsrc.txt", logfile)
    served = archive_packages((paths.toolbox / "tmp" / "archive.txt").read_text())
    installed = dict(line.split("\t") for line in
                     (paths.toolbox / "tmp" / "installed.txt").read_text().splitlines())
    packages = []
    for p in old.packages:
        name = names[p.name]
        version = installed.get(name) or versions.data[p.name]["installed"]
        if (name, version) not in served:
            raise SetupError(f"{name} {version} is not in the archive's lists: cannot pin it")
        packages.append(Package(name, version, served[(name, version)], p.group, p.fallback,
                                p.install))
    qemu = old.source("qemu")
    version = versions.data["qemu (source)"]["installed"]
    files = archive_sources((paths.toolbox / "tmp" / "showsrc.txt").read_text())
    return Lock(packages, [Source(qemu.name, version, qemu.suite, files[("qemu", version)])],
                tree_sha256(paths.libvfio_user_src))
