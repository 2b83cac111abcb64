"""The lab: device servers + one QEMU VM, controlled over QMP and SSH.

    with Lab(LabConfig(gpus=2)) as lab:
        lab.boot()
        lab.ssh("cat /proc/interrupts")
        lab.unplug_gpu(0); lab.plug_gpu(0)

Each lab gets a run directory ($CACHE/runs/<time>-<pid>) with the console log,
QEMU's stderr, every device server's log and the lab's SSH key. A watchdog
thread kills QEMU when it reports a KVM error (QEMU then pauses instead of
exiting) or outlives its deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import affinity
from .accel import kvm_works
from .child import start_serving
from .child import stop as stop_child
from .console import Console, scan
from .cputrace import BARS_FILE, CPU_FILE, SYMBOLS_FILE
from .errors import GuestCommandFailed, GuestKernelError, HmmgpuError, VmError
from .image import GUEST_BIN_DIR, write_initrd
from .kconfig import check as check_kconfig
from .kernel import GuestKernel, check_module_for, default_kernel, read_module
from .paths import Paths
from .qmp import Qmp, write_dump
from .ssh import Guest, Result, free_port, make_key
from .toolbox import Toolbox
from .trace_ctl import TraceControl

log = logging.getLogger("hmmgpu")

BOOT_TIMEOUT_TCG = 180
BOOT_TIMEOUT_KVM = 60
# run states in which QEMU halted the guest by itself (a device's error
# notifier, a disk error, a guest panic): the lab cannot go on
VM_STOPPED_BY_QEMU = {"internal-error", "io-error", "guest-panicked"}
SHARE_MOUNT = "/host"
SHARE_TAG = "hmmgpu-share"
USER_MODULE_DIR = f"{GUEST_BIN_DIR}/user"
USER_QMP = "qmp-user.sock"
# kdump-raw-*: a plain kdump file crash reads; kdump-* (no raw) is the
# "flattened" stream, which needs makedumpfile -R first
DUMP_FORMATS = ("elf", "kdump-raw-zlib", "kdump-raw-lzo", "kdump-raw-snappy",
                "kdump-zlib", "kdump-lzo", "kdump-snappy")


@dataclass
class LabConfig:
    gpus: int = 1
    memory_mb: int = 2048
    cpus: int = 2
    accel: str = "auto"  # auto | kvm | tcg
    kernel_args: str = ""
    verbose: bool = False
    max_lifetime_s: float = 4 * 3600
    # MSI-X on the GPUs. QEMU 11.1 aborts when a vfio-user-pci device with
    # MSI-X is removed (device_del), so hot-unplug needs msix=False for now.
    msix: bool = True
    # per GPU: private and coherent halves, each with room for benchmark_thp_migration
    vram_mb: int = 1024
    # the VRAM BAR (CPU-coherent VRAM, BAR4); False: device-only VRAM
    vram_bar: bool = True
    # record a DMA trace of each GPU from its start, streamed to the run
    # directory as gpuN.hmmtrace (control it later with gpu.trace either way)
    trace: bool = False
    # record guest CPU accesses to the GPUs' BARs with their PCs (the TCG
    # plugin; TCG only): cpu-mmio.bin, gpu-bars.json, kallsyms.txt in the run dir
    cpu_trace: bool = False
    extra_qemu_args: list[str] = field(default_factory=list)
    # the guest kernel (host/kernel.py); None: the pinned Debian kernel
    kernel: GuestKernel | None = None
    # the user's modules, loaded in this order once the guest is up
    modules: list[Path] = field(default_factory=list)
    # a host directory shared read-write into the guest at SHARE_MOUNT (virtiofs)
    share: Path | None = None
    # QEMU's gdb stub on this loopback port (and nokaslr, so vmlinux matches)
    gdb_port: int | None = None
    # end the run as soon as the console shows an Oops, BUG, panic, hung task
    # or WARNING (CI): the command in flight fails at once with the excerpt
    fail_fast: bool = False
    # device servers on one CPU, QEMU's vfio-user I/O threads on the others
    # (host/affinity.py: each MMIO reply otherwise preempts the server)
    separate_cpus: bool = True
    # how long each device server busy-polls its socket after a message
    # before it sleeps (device/server.py; None: the server's default, 0: never)
    server_poll_us: int | None = None


SHM = Path("/dev/shm")
NO_EXIT_STATUS = -1  # fabric's exit code for a command whose channel closed without one


def vram_dir(run_dir: Path) -> Path:
    """Where a lab's GPUs keep their VRAM files: tmpfs, named after the run
    (whose name holds the harness's pid); directories left by a harness that
    died are removed first."""
    if not SHM.is_dir():
        return run_dir
    for old in SHM.glob("hmmgpu-*"):
        pid = old.name.split("-")[3] if old.name.count("-") >= 4 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    d = SHM / f"hmmgpu-{run_dir.name}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


class GpuProcess:
    """One device server child process."""

    def __init__(self, index: int, run_dir: Path, library: Path, msix: bool = True,
                 vram_mb: int = 1024, trace: bool = False, vram_dir: Path | None = None,
                 vram_bar: bool = True, poll_us: int | None = None) -> None:
        self.index = index
        self.poll_us = poll_us
        self.vram_file = (vram_dir or run_dir) / f"gpu{index}.vram"
        self.vram_bar = vram_bar
        self.peers: dict[int, Path] = {}  # fabric id -> VRAM file: the links
        self.trace_from_start = trace
        self.library = library
        self.vram_mb = vram_mb
        self.msix = msix
        self.id = f"gpu{index}"
        self.socket = run_dir / f"{self.id}.sock"
        self.log = run_dir / f"{self.id}.log"
        self.control = run_dir / f"{self.id}.ctl"
        self.trace_file = run_dir / f"{self.id}.hmmtrace"
        self.trace = TraceControl(self.control)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "hmmgpu.device.server", "--socket", str(self.socket),
               "--log-file", str(self.log), "--library", str(self.library),
               "--vram", f"{self.vram_mb}M", "--control", str(self.control),
               "--vram-file", str(self.vram_file), "--fabric-id", str(self.index)]
        cmd += [f"--peer={i}={path}" for i, path in sorted(self.peers.items())]
        if not self.vram_bar:
            cmd.append("--no-vram-bar")
        if self.trace_from_start:
            cmd += ["--trace", str(self.trace_file)]
        if not self.msix:
            cmd.append("--no-msix")
        if self.poll_us is not None:
            cmd.append(f"--poll-us={self.poll_us}")
        self.proc = start_serving(cmd, self.socket, self.log, f"device server {self.id}", 20)

    def stop(self) -> None:
        stop_child(self.proc)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death(self) -> str:
        """How the server ended, with its log ("" while it runs)."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return ""
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return f"device server {self.id} died ({how}); its log: {self.log}"

    def qmp_device(self) -> dict[str, Any]:
        return {"driver": "vfio-user-pci", "id": self.id, "bus": f"rp{self.index}",
                "socket": {"path": str(self.socket), "type": "unix"}}


class Lab:
    def __init__(self, config: LabConfig | None = None, paths: Paths | None = None) -> None:
        self.config = config or LabConfig()
        self.paths = paths or Paths.default()
        self.tb = Toolbox(self.paths.toolbox)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = self.paths.runs / f"{stamp}-{os.getpid()}-{id(self) % 10000}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.paths.versions.exists():  # which pinned (or fallback) inputs this run used
            shutil.copy(self.paths.versions, self.run_dir / "versions.json")
        self.console = Console(self.run_dir / "console.log")
        self.qemu_log = self.run_dir / "qemu.log"
        # the GPUs' VRAM files, where each GPU's fabric peers open them
        self.vram_dir = vram_dir(self.run_dir)
        self.gpus = [GpuProcess(i, self.run_dir, self.paths.libvfio_user, self.config.msix,
                                self.config.vram_mb, self.config.trace, self.vram_dir,
                                self.config.vram_bar, self.config.server_poll_us)
                     for i in range(self.config.gpus)]
        for g in self.gpus:  # every GPU links to every other one
            g.peers = {p.index: p.vram_file for p in self.gpus if p is not g}
        self.qemu: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self._stops_seen = 0  # QMP event mark: STOP events before it are handled
        self.guest: Guest | None = None
        self.accel = ""
        self.kernel: GuestKernel | None = None
        self.virtiofs = None
        self.bins: dict[str, Path] = {}
        self.boot_started = 0.0  # wall clock, for "what changed since the boot"
        self.boot_seconds = 0.0
        self._watchdog_stop = threading.Event()
        self.killed_by_watchdog = ""
        self._deaths_said: set[str] = set()  # device server deaths the watchdog logged
        # fail_fast_suspended(): while set, and for console bytes before
        # _fail_fast_resume, kernel failures do not end the run
        self._fail_fast_quiet = False
        self._fail_fast_resume = 0

    # ---- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def say(self, msg: str) -> None:
        print(f"[hmmgpu] {msg}", file=sys.stderr, flush=True)

    def choose_accel(self) -> str:
        want = self.config.accel
        if want == "tcg":
            return "tcg"
        ok = kvm_works(self.tb.qemu_command(), self.tb.qemu_env(), self.tb.vmlinuz,
                       self.paths.cache)
        if want == "kvm" and not ok:
            raise VmError("KVM was asked for but does not run a guest on this host "
                          "(see the KVM probe in the log); use --accel tcg")
        return "kvm" if ok else "tcg"

    def qemu_args(self, port: int, initrd: Path) -> list[str]:
        c = self.config
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else \
            ["-accel", "tcg", "-cpu", "max"]
        mem = f"{c.memory_mb}M"
        # a task stuck in D state is reported (and ends a fail-fast run) after
        # 60 s, not 120; kernel_args given later override it
        cmdline = ("console=ttyS0 panic=-1 sysctl.kernel.hung_task_timeout_secs=60 "
                   f"{c.kernel_args}")
        if c.gdb_port:
            cmdline += " nokaslr"  # symbols of vmlinux at their link addresses
        args = [
            *self.tb.qemu_command(), *accel, "-smp", str(c.cpus), "-m", mem,
            "-nographic", "-nodefaults", "-no-reboot",
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            "-machine", "q35,memory-backend=mem",
            "-chardev", f"file,id=con,path={self.console.path}", "-serial", "chardev:con",
            "-qmp", f"unix:{self.run_dir / 'qmp.sock'},server=on,wait=off",
            # a second monitor for tools outside the lab ('hmmgpu dump', yours)
            "-qmp", f"unix:{self.run_dir / USER_QMP},server=on,wait=off",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            # the guest's vmcoreinfo reaches dump-guest-memory (drgn, crash)
            "-device", "vmcoreinfo",
            "-kernel", str(self.kernel.image), "-initrd", str(initrd),
            "-append", cmdline.strip(),
        ]
        if c.gdb_port:
            args += ["-gdb", f"tcp:127.0.0.1:{c.gdb_port}"]
        if self.virtiofs is not None:
            args += ["-chardev", f"socket,id=share,path={self.virtiofs.socket}",
                     "-device", f"vhost-user-fs-pci,chardev=share,tag={SHARE_TAG}"]
        for g in self.gpus:
            args += ["-device", f"pcie-root-port,id=rp{g.index},chassis={g.index + 1},"
                                f"slot={g.index + 1}"]
            args += ["-device", json.dumps(g.qmp_device())]
        if c.cpu_trace:
            args += ["-plugin", f"{self.paths.qemu_plugin},out={self.run_dir / CPU_FILE}"]
        return args + c.extra_qemu_args

    def prepare_kernel(self) -> dict[str, Path]:
        """Check the guest kernel and build what it needs; the guest binaries
        for its overlay (name -> file)."""
        k = self.kernel = self.config.kernel or default_kernel(self.paths)
        check_kconfig(k.config, k.config_path or k.image, share=self.config.share is not None)
        bins = {p.name: p for p in self.paths.artifacts.iterdir()}
        if not k.default:
            from .kbuild import KernelBuild
            bins.update({p.name: p for p in KernelBuild(self.paths, k).ensure().iterdir()})
        return bins

    def boot(self) -> None:
        """Start device servers and QEMU, then wait until SSH answers."""
        from .provision import Provisioner
        self.boot_started = time.time()
        Provisioner(self.paths).ensure()
        c = self.config
        bins = self.bins = self.prepare_kernel()
        user = [(check_module_for(self.kernel, m), m) for m in c.modules]
        if c.share is not None and not c.share.is_dir():
            raise HmmgpuError(f"--share {c.share}: no such directory")
        self.accel = self.choose_accel()
        if c.cpu_trace and self.accel != "tcg":
            raise HmmgpuError("the CPU-side trace needs TCG (the plugin instruments translated "
                              "code); this lab runs under KVM: use accel='tcg'")
        t0 = time.monotonic()
        self.say(f"accelerator: {self.accel}" + ("" if self.accel == "kvm" else
                 " (KVM does not run guests here)" if c.accel == "auto" else ""))
        if not self.kernel.default:
            self.say(f"kernel: {self.kernel.label}")
        (self.run_dir / "kernel.json").write_text(json.dumps(self.kernel.describe(), indent=2))
        key_file = self.run_dir / "id_ed25519"
        pub = make_key(key_file)
        files = {f"{USER_MODULE_DIR}/{name}.ko": read_module(m) for name, m in user}
        initrd = write_initrd(self.paths.image / "base.cpio", self.run_dir / "initrd.cpio", pub,
                              bins, self.kernel.boot_modules(), files)
        for g in self.gpus:
            g.start()
        if c.share is not None:
            from .virtiofs import Virtiofsd
            self.virtiofs = Virtiofsd(self.tb, c.share, self.run_dir)
            self.virtiofs.start()
        port = free_port()
        args = self.qemu_args(port, initrd)
        (self.run_dir / "qemu.cmd").write_text(shlex.join(args) + "\n")
        if c.verbose:
            self.say("$ " + shlex.join(args))
        self.say(f"booting ({len(self.gpus)} GPU(s)); logs in {self.run_dir}")
        with open(self.qemu_log, "ab") as out:
            self.qemu = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.tb.qemu_env()})
        threading.Thread(target=self._watchdog, name="qemu-watchdog", daemon=True).start()
        try:
            self.qmp = Qmp(self.run_dir / "qmp.sock", f"lab-{self.run_dir.name}")
            self.guest = Guest(port, key_file, verbose=c.verbose)
            timeout = BOOT_TIMEOUT_KVM if self.accel == "kvm" else BOOT_TIMEOUT_TCG
            self.guest.wait(timeout, alive=self.qemu_alive)
        except VmError as e:
            self.check_console()
            raise VmError(f"{self._stopped_why() or e}\nconsole tail:\n{self.console.tail()}",
                          self.qemu_log) from e
        self.boot_seconds = time.monotonic() - t0
        self.check_console()
        self.pin_servers()
        if c.share is not None:
            self.ssh(f"mkdir -p {SHARE_MOUNT} && mount -t virtiofs {SHARE_TAG} {SHARE_MOUNT}")
        for name, m in user:
            r = self.ssh(f"insmod {USER_MODULE_DIR}/{name}.ko", check=False)
            if not r.ok:
                raise HmmgpuError(f"insmod {m} failed in the guest: "
                                  f"{(r.stderr or r.stdout).strip()}", self.console.path)

    def _stopped_why(self) -> str:
        return f"the run was stopped: {self.killed_by_watchdog}" if self.killed_by_watchdog \
            else ""

    def gone_why(self) -> str:
        """Why the VM is gone: the watchdog's reason, or QEMU's exit and its
        last error line; and any device server that died before."""
        why = self._stopped_why()
        if not why:
            code = self.qemu.poll() if self.qemu is not None else None
            said = [ln for ln in self.qemu_log.read_text(errors="replace").splitlines()
                    if ln.startswith("qemu-system")] if self.qemu_log.exists() else []
            why = f"QEMU exited ({code})" + (f": {said[-1]}" if said else "")
        return "; ".join([*self.device_deaths(), why])

    def device_deaths(self) -> list[str]:
        """Device servers that died under the running VM (its guest sees
        those GPUs answer all-ones), each with its log."""
        return [d for g in self.gpus if (d := g.death())]

    def died_under_error(self) -> bool:
        """After a guest command failed with an exception: is QEMU gone? The
        connection often breaks just before QEMU has exited, so wait a little."""
        if self.qemu is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(2)
        return not self.qemu_alive()

    def qemu_alive(self) -> bool:
        # once the watchdog decided, QEMU is as good as dead (and while its
        # thread reaps it, poll() cannot tell)
        return self.qemu is not None and not self.killed_by_watchdog and self.qemu.poll() is None

    def _watchdog(self) -> None:
        deadline = time.monotonic() + self.config.max_lifetime_s
        scanned = 0  # console bytes already searched (whole lines only)
        while not self._watchdog_stop.wait(0.5):
            if not self.qemu_alive():
                return
            for death in set(self.device_deaths()) - self._deaths_said:
                self._deaths_said.add(death)
                self.say(death)
            reason = ""
            if time.monotonic() > deadline:
                reason = f"ran longer than {self.config.max_lifetime_s:.0f} s (--timeout)"
            elif b"KVM internal error" in self.qemu_log.read_bytes()[-4096:]:
                reason = "KVM internal error (QEMU paused)"
            elif (stopped := self._vm_stopped_by_qemu()):
                reason = stopped
            elif self.config.fail_fast and self._fail_fast_quiet:
                scanned = self.console.size()
            elif self.config.fail_fast:
                scanned = max(scanned, self._fail_fast_resume)
                text = self.console.text(scanned)
                done = text.rfind("\n") + 1  # whole lines; the rest next time
                found = scan(text[:done])
                scanned += len(text[:done].encode(errors="replace"))
                if found:
                    self._settle_console()
                    reason = f"guest kernel: {found[0].line}"
            if reason:
                self.killed_by_watchdog = reason
                log.error("watchdog: killing QEMU: %s", reason)
                self.kill()
                return

    @contextlib.contextmanager
    def fail_fast_suspended(self) -> Iterator[None]:
        """Kernel failures printed meanwhile do not end a fail-fast run (they
        are still found by check_console): for work whose WARN is expected."""
        self._fail_fast_quiet = True
        try:
            yield
        finally:
            self._settle_console()  # the rest of its splat, still ignored
            self._fail_fast_resume = self.console.size()
            self._fail_fast_quiet = False

    def _vm_stopped_by_qemu(self) -> str:
        """Why QEMU stopped the guest on its own ("" while it runs, or while we
        paused it). A stopped guest answers nothing: SSH would wait forever.
        QEMU announces every stop with a STOP event; only then is its run
        state asked for, not on every watchdog tick."""
        qmp = self.qmp
        if qmp is None:
            return ""
        mark = qmp.mark()  # taken first: a STOP arriving meanwhile is seen again, not lost
        stops = [e for e in qmp.events.since(self._stops_seen) if e.get("event") == "STOP"]
        self._stops_seen = mark
        if not stops:
            return ""
        try:
            status = qmp.cmd("query-status", timeout=5)["status"]
        except VmError:
            return ""  # QEMU going away is the exit check's business
        if status not in VM_STOPPED_BY_QEMU:
            return ""
        said = [ln for ln in self.qemu_log.read_text(errors="replace").splitlines()[-20:]
                if "error" in ln.lower()]
        return f"QEMU stopped the VM ({status})" + (f": {said[-1]}" if said else "")

    def _settle_console(self, quiet_s: float = 0.5, most_s: float = 3.0) -> None:
        """Let the rest of a splat reach the console log before QEMU dies."""
        end = time.monotonic() + most_s
        size = self.console.size()
        while time.monotonic() < end:
            time.sleep(quiet_s)
            now = self.console.size()
            if now == size:
                return
            size = now

    # ---- guest access ----------------------------------------------------------

    def ssh(self, command: str, check: bool = True, timeout: float | None = 600) -> Result:
        """Run a guest command; raise GuestKernelError when the kernel printed an
        Oops/BUG/WARNING/panic while it ran."""
        if self.guest is None:
            raise VmError("the lab is not booted")
        since = self.console.size()
        try:
            try:
                r = self.guest.run(command, check=False, timeout=timeout)
            except Exception:
                if not self.died_under_error():
                    raise
                r = None
            # no exit status: the connection dropped, as it does when QEMU dies
            # (the same break as the exception above, seen a moment earlier)
            if r is not None and r.exit_code == NO_EXIT_STATUS and self.died_under_error():
                r = None
            # (the watchdog may still be reaping QEMU, when poll() says "alive")
            if r is None or self.killed_by_watchdog:
                # QEMU is gone: say why (the console's report, the watchdog's reason)
                self.check_console(since)
                raise VmError(f"{self.gone_why()} while running: "
                              f"{command}\nconsole tail:\n{self.console.tail()}",
                              self.console.path)
            if check and not r.ok:
                raise GuestCommandFailed(command, r.exit_code, r.stdout, r.stderr)
            return r
        finally:
            self.check_console(since)

    def check_console(self, since: int = 0) -> None:
        """Raise GuestKernelError if the console shows an Oops/BUG/WARNING/panic."""
        failures = self.console.failures(since)
        if failures:
            raise GuestKernelError(f"guest kernel: {failures[0].line}", failures[0].excerpt,
                                   self.console.path)

    def guest_pci_devices(self) -> list[dict[str, str]]:
        out = self.guest.run(
            "for d in /sys/bus/pci/devices/*; do "
            "drv=$(basename $(readlink $d/driver) 2>/dev/null); "
            "echo $(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class) ${drv:--};"
            " done").stdout
        devs = []
        for line in out.splitlines():
            slot, vendor, device, cls, drv = line.split()
            devs.append({"slot": slot, "vendor": vendor[2:], "device": device[2:],
                         "class": cls, "driver": "" if drv == "-" else drv})
        return devs

    def guest_bin(self, name: str) -> str:
        return f"{GUEST_BIN_DIR}/{name}"

    # ---- QMP operations -----------------------------------------------------------

    def unplug_gpu(self, index: int, timeout: float = 60, force: bool = False) -> None:
        """QMP device_del, then wait for DEVICE_DELETED."""
        g = self.gpus[index]
        if g.msix and not force:
            raise VmError("QEMU aborts on device_del of a vfio-user-pci device with MSI-X "
                          "(vfio_user_pci_finalize tears down the MSI-X PBA region after its "
                          "BAR is gone); boot the lab with LabConfig(msix=False) to hot-unplug")
        since = self.qmp.mark()
        self.qmp.cmd("device_del", id=g.id)
        self.qmp.wait_event("DEVICE_DELETED", timeout,
                            match=lambda e: e.get("data", {}).get("device") == g.id, since=since)

    def plug_gpu(self, index: int) -> None:
        g = self.gpus[index]
        if not g.alive:
            g.start()
        self.qmp.cmd("device_add", **g.qmp_device())
        self.pin_servers()  # a new server, and a new I/O thread for it

    def pin_servers(self, extra_servers: tuple[int, ...] = ()) -> None:
        """host/affinity.py, for the GPUs' servers and `extra_servers`
        (pids of other vfio-user servers this QEMU talks to)."""
        if not self.config.separate_cpus or self.qemu is None:
            return
        servers = [g.proc.pid for g in self.gpus if g.alive and g.proc is not None]
        done = affinity.separate([*servers, *extra_servers], self.qemu.pid)
        if done and self.config.verbose:
            self.say(done)

    def reset(self, timeout: float | None = None) -> None:
        """System reset (like pressing the reset button), then wait for SSH again.

        QEMU runs with -no-reboot so that a guest reboot or panic ends the lab;
        for this one reset the reboot action is switched to "reset"."""
        self.qmp.cmd("set-action", reboot="reset")
        try:
            self.guest.close()
            self.qmp.cmd("system_reset")
            self.guest.wait(timeout or (BOOT_TIMEOUT_KVM if self.accel == "kvm"
                                        else BOOT_TIMEOUT_TCG), alive=self.qemu_alive)
        finally:
            if self.qemu_alive():
                self.qmp.cmd("set-action", reboot="shutdown")

    def dump(self, path: Path, fmt: str = "elf") -> Path:
        """Write the guest's memory to `path` with QMP dump-guest-memory: an ELF
        core or a kdump file, with the guest's vmcoreinfo, for drgn and crash."""
        if fmt not in DUMP_FORMATS:
            raise HmmgpuError(f"dump format {fmt!r}: use one of {', '.join(DUMP_FORMATS)}")
        write_dump(self.qmp, path, fmt)
        return path

    def gdb_command(self) -> str:
        """The gdb command line that attaches to this lab's gdb stub with the
        kernel's vmlinux and the symbols of our (and the user's) loaded modules."""
        k = self.kernel
        vm = k.vmlinux if k else None
        cmd = ["gdb", "-q", str(vm) if vm else "VMLINUX",
               "-ex", f"target remote 127.0.0.1:{self.config.gdb_port}"]
        for name, path in self.module_files().items():
            r = self.ssh(f"cat /sys/module/{name}/sections/.text "
                         f"/sys/module/{name}/sections/.data "
                         f"/sys/module/{name}/sections/.bss 2>/dev/null", check=False)
            addrs = r.stdout.split()
            if len(addrs) == 3:
                cmd += ["-ex", f"add-symbol-file {path} {addrs[0]} -s .data {addrs[1]} "
                        f"-s .bss {addrs[2]}"]
        line = shlex.join(cmd)
        if vm is None:
            line += (f"\n  (no vmlinux with symbols for {k.release if k else 'this kernel'}: "
                     "Debian ships it as linux-image-<release>-dbg; a --kernel tree brings its "
                     "own)")
        return line

    def module_files(self) -> dict[str, Path]:
        """Module name -> the host file the guest loaded it from."""
        out = {Path(n).stem: p for n, p in self.bins.items() if n.endswith(".ko")}
        out.update({Path(m).name.split(".ko")[0].replace("-", "_"): m
                    for m in self.config.modules})
        return out

    def pci_info(self) -> list[dict[str, Any]]:
        return self.qmp.cmd("query-pci")

    def sanitizer_reports(self, clear: bool = False) -> list[str]:
        """Every live GPU's driver-sanitizer reports, one line each; `clear`
        empties them."""
        out = []
        for gpu in self.gpus:
            if gpu.alive:
                for r in gpu.trace.sanitizer(clear=clear)["reports"]:
                    out.append(f"{gpu.id} {r['check']} queue {r['queue']} ctx {r['ctx']} "
                               f"command {r['command']} addr {r['addr']:#x} at "
                               f"{r['t_ns'] / 1e9:.6f} s: {r['detail']}")
        return out

    def gpu_bars(self) -> list[dict[str, int]]:
        """Each GPU's BAR0 as the guest programmed it: [{"gpu", "base", "size"}]."""
        ids = {g.id: g.index for g in self.gpus}
        out = []

        def walk(devices: list[dict[str, Any]]) -> None:
            for d in devices:
                if d.get("qdev_id") in ids:
                    for r in d.get("regions", []):
                        if r.get("bar") == 0:
                            out.append({"gpu": ids[d["qdev_id"]], "base": r["address"],
                                        "size": r["size"]})
                walk(d.get("pci_bridge", {}).get("devices", []))

        for bus in self.pci_info():
            walk(bus.get("devices", []))
        return sorted(out, key=lambda b: b["gpu"])

    def save_cpu_trace_context(self) -> None:
        """What the plugin's records need to be read: BARs and guest symbols."""
        (self.run_dir / BARS_FILE).write_text(json.dumps(self.gpu_bars()))
        syms = self.ssh("cat /proc/kallsyms", check=False, timeout=120).stdout
        (self.run_dir / SYMBOLS_FILE).write_text(syms)

    def shutdown(self, timeout: float = 20) -> None:
        """Power off cleanly if possible, then stop everything."""
        if self.qemu_alive():
            if self.config.cpu_trace and self.guest is not None:
                try:
                    self.save_cpu_trace_context()
                except Exception as e:  # noqa: BLE001 - shutting down must go on
                    self.say(f"CPU trace context not saved: {e}")
            try:
                if self.guest is not None:
                    self.guest.run("poweroff -f", check=False, timeout=5)
            except Exception:  # noqa: BLE001 - the connection dies with the guest
                pass
            try:
                self.qemu.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stop_all()

    def kill(self) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()

    def _stop_all(self) -> None:
        self._watchdog_stop.set()
        if self.guest is not None:
            self.guest.close()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        self.kill()
        for g in self.gpus:
            g.stop()
        shutil.rmtree(self.vram_dir, ignore_errors=True)
        if self.virtiofs is not None:
            self.virtiofs.stop()
