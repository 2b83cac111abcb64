"""The `hmmgpu` command line.

Every subcommand provisions what is missing first (with progress), prints
where its logs went, and turns expected failures into one plain line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import HmmgpuError
from .paths import REPO, Paths

HEADER = REPO / "guest" / "include" / "hmmgpu_hw.h"
PLUGIN_HEADER = REPO / "qemu-plugin" / "hmmgpu_cpu_record.h"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one plain line, exit 2
        print(f"{self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def cmd_setup(args: argparse.Namespace) -> int:
    from .pins import LOCK_FILE, Versions, dump_lock, load_lock
    paths = Paths.default()
    if args.print_versions:
        print(f"pinned in {LOCK_FILE}; installed per {paths.versions}")
        print(Versions(paths.versions).table(load_lock()))
        return 0
    if args.update_lock:
        from .provision import lock_from_installed
        LOCK_FILE.write_text(dump_lock(lock_from_installed(paths)))
        print(f"hmmgpu: wrote {LOCK_FILE} from what is installed; review it with git diff")
        return 0
    from .provision import Provisioner
    Provisioner(paths, verbose=args.verbose, pins=args.pins).ensure()
    print(f"hmmgpu: provisioned in {paths.cache} (versions: hmmgpu setup --print-versions)")
    if args.debian_kernel:
        from .flavours import fetch_flavour
        image, mods = fetch_flavour(paths, args.debian_kernel)
        print(f"hmmgpu: boot it with --kernel {image} --modules {mods}")
    return 0


def cmd_device_serve(args: argparse.Namespace) -> int:
    from ..device import server
    argv = ["--socket", args.socket, "--library", str(Paths.default().libvfio_user),
            "--vram", f"{args.vram}M"]
    if args.no_msix:
        argv.append("--no-msix")
    if args.log_file:
        argv += ["--log-file", args.log_file]
    if args.verbose:
        argv.append("--verbose")
    return server.main(argv)


def generated_headers() -> dict[Path, str]:
    """Each C header generated from a Python definition -> its text."""
    from ..device.hwdef import render_c_header
    from .cputrace import render_plugin_header
    return {HEADER: render_c_header(), PLUGIN_HEADER: render_plugin_header()}


def cmd_hwdef(args: argparse.Namespace) -> int:
    for path, text in generated_headers().items():
        if args.write:
            path.write_text(text)
            print(f"wrote {path}")
        else:
            sys.stdout.write(f"/* ---- {path.relative_to(REPO)} ---- */\n{text}")
    return 0


def lab_config(args: argparse.Namespace, **kw: object):
    """The LabConfig of boot, selftest and demo: their kernel, modules,
    share, timeout and gdb options (bad paths refused here, in one line)."""
    from .kernel import resolve_kernel
    from .lab import LabConfig
    from .ssh import free_port
    kernel = resolve_kernel(Paths.default(), args.kernel, args.modules) \
        if args.kernel or args.modules else None
    modules = []
    for m in args.module or []:
        p = Path(m).expanduser().absolute()
        if not p.is_file():
            raise HmmgpuError(f"--module {m}: no such file")
        modules.append(p)
    share = None
    if args.share:
        share = Path(args.share).expanduser().absolute()
        if not share.is_dir():
            raise HmmgpuError(f"--share {args.share}: no such directory (create it first)")
    extra: dict[str, object] = {}
    if args.server_poll_us is not None and args.server_poll_us < 0:
        raise HmmgpuError(f"--server-poll-us {args.server_poll_us}: give 0 or more "
                          "microseconds (0: the servers never poll)")
    if args.timeout is not None:
        if args.timeout <= 0:
            raise HmmgpuError(f"--timeout {args.timeout:g}: give the run's limit in seconds")
        extra["max_lifetime_s"] = args.timeout
    gdb = None
    if args.gdb is not None:
        gdb = args.gdb or free_port()
    return LabConfig(accel=args.accel, verbose=args.verbose, kernel=kernel, modules=modules,
                     share=share, gdb_port=gdb, fail_fast=not args.no_fail_fast,
                     separate_cpus=not args.no_cpu_placement,
                     server_poll_us=args.server_poll_us,
                     kernel_args=args.append,
                     **extra, **kw)


def print_gdb(lab) -> None:
    if lab.config.gdb_port:
        print(f"hmmgpu: gdb stub on 127.0.0.1:{lab.config.gdb_port}; attach with:\n"
              f"  {lab.gdb_command()}", flush=True)


def cmd_boot(args: argparse.Namespace) -> int:
    from .lab import SHARE_MOUNT, Lab
    cfg = lab_config(args, gpus=args.gpus, memory_mb=args.memory, vram_mb=args.vram,
                     trace=args.trace, cpu_trace=args.cpu_trace)
    with Lab(cfg) as lab:
        lab.boot()
        print(f"hmmgpu: VM ready in {lab.boot_seconds:.1f} s ({lab.accel}, {lab.kernel.label});"
              f" logs in {lab.run_dir}")
        if args.trace:
            print("hmmgpu: DMA traces: " + ", ".join(str(g.trace_file) for g in lab.gpus))
        if cfg.share:
            print(f"hmmgpu: {cfg.share} is {SHARE_MOUNT} in the guest (read-write)")
        for dev in lab.guest_pci_devices():
            print(f"  guest PCI {dev['slot']}: {dev['vendor']}:{dev['device']} "
                  f"driver={dev['driver'] or '-'}")
        if cfg.gdb_port:
            if cfg.gpus:  # the driver's symbols belong in the gdb command
                lab.ssh(f"test -d /sys/module/hmmgpu || insmod {lab.guest_bin('hmmgpu.ko')}")
            print_gdb(lab)
        code = 0
        if args.command:
            r = lab.ssh(args.command, check=False, timeout=None)
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            code = r.exit_code  # the guest command's status is ours
        if args.hold or (cfg.gdb_port and not args.command):
            print("hmmgpu: holding the VM (e.g. for 'hmmgpu trace ...'); Ctrl-C stops it")
            while lab.qemu_alive():
                time.sleep(1)
            if lab.killed_by_watchdog:
                raise HmmgpuError(f"the VM was stopped: {lab.killed_by_watchdog}",
                                  lab.console.path)
    return code


def cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import compare, run_selftest, verdict
    modes = ["reference"] if args.reference else ["hmmgpu", "reference"] if args.compare \
        else ["hmmgpu"]
    spm = args.compare if args.spm is None else args.spm
    if spm and "reference" not in modes:
        raise HmmgpuError("--spm is test_hmm.ko's coherent mode: use it with --reference "
                          "or --compare")
    results = run_selftest(modes, lab_config(args),
                           hmm_tests_args=[a for a in args.hmm_tests_args if a != "--"],
                           on_boot=print_gdb, spm=spm)
    for r in results:
        print(r.summary())
    if len(results) > 1:
        print(compare(results))
    print(f"hmmgpu: results in {', '.join(str(r.json_path) for r in results)} "
          f"(JUnit: {', '.join(str(r.junit_path) for r in results)})")
    return 0 if verdict(modes, results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job today: boot the lab, show the device answers, run the
    reference selftest."""
    from .demo import run_demo
    return run_demo(lab_config(args))


def _listening(path: Path) -> bool:
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def cmd_dump(args: argparse.Namespace) -> int:
    from .lab import DUMP_FORMATS, USER_QMP
    from .qmp import Qmp, write_dump
    paths = Paths.default()
    runs = [Path(args.run)] if args.run else sorted(
        (p for p in paths.runs.glob("*") if (p / USER_QMP).exists()), reverse=True)
    if args.format not in DUMP_FORMATS:
        raise HmmgpuError(f"--format {args.format}: use one of {', '.join(DUMP_FORMATS)}")
    for run in runs:
        if not args.run and not _listening(run / USER_QMP):
            continue  # a finished run's socket: nobody answers
        try:
            qmp = Qmp(run / USER_QMP, "hmmgpu-dump", connect_timeout=3)
        except HmmgpuError:
            continue
        out = Path(args.output or run / f"vmcore.{args.format}").absolute()
        try:
            print(f"hmmgpu: dumping the guest of {run} into {out} (the guest pauses)",
                  flush=True)
            write_dump(qmp, out, args.format)
        finally:
            qmp.close()
        kernel = json.loads((run / "kernel.json").read_text()) \
            if (run / "kernel.json").exists() else {}
        vm = kernel.get("vmlinux") or "VMLINUX"
        print(f"hmmgpu: wrote {out} ({out.stat().st_size >> 20} MiB); open it with\n"
              f"  drgn -c {out} -s {vm}\n  crash {vm} {out}")
        return 0
    raise HmmgpuError(f"no running lab to dump in {args.run or paths.runs} (boot one, e.g. "
                      "'hmmgpu boot --hold')")


def cmd_dev(args: argparse.Namespace) -> int:
    from .devloop import DevLoop
    from .lab import Lab
    if args.share:
        raise HmmgpuError("dev shares its build directory into the guest; --share does not "
                          "go with it")
    mod_dir = None
    if args.dir:
        mod_dir = Path(args.dir).expanduser().absolute()
        if not (mod_dir / "Kbuild").exists() and not (mod_dir / "Makefile").exists():
            raise HmmgpuError(f"--dir {args.dir}: no Kbuild or Makefile there (a module "
                              "directory builds with make -C <kernel> M=<dir>)")
    cases = [a for a in args.hmm_tests_args if a != "--"]
    names = [cases[i + 1] for i, a in enumerate(cases[:-1]) if a == "-t"]
    if len(names) * 2 != len(cases):
        raise HmmgpuError("after '--' dev takes hmm-tests cases as -t NAME ... "
                          f"(got: {' '.join(cases)})")
    cfg = lab_config(args, gpus=args.gpus)
    paths = Paths.default()
    release = cfg.kernel.release if cfg.kernel else "default"
    cfg.share = DevLoop.share_dir(paths.cache, release)
    with Lab(cfg) as lab:
        lab.boot()
        print(f"hmmgpu: VM ready in {lab.boot_seconds:.1f} s ({lab.accel}, {lab.kernel.label});"
              f" logs in {lab.run_dir}", flush=True)
        print_gdb(lab)
        loop = DevLoop(lab, mod_dir, names, args.run or "",
                       out=lambda s: print(s, flush=True))
        loop.watch(cycles=args.cycles)
    return 0


def cmd_kconfig(args: argparse.Namespace) -> int:
    from .kconfig import check, fragment, parse_config
    if args.check:
        cfg = Path(args.check)
        if cfg.is_dir():
            cfg = cfg / ".config"
        if not cfg.is_file():
            raise HmmgpuError(f"--check {args.check}: no such .config")
        check(parse_config(cfg.read_text()), cfg, share=True)
        print(f"hmmgpu: {cfg} has every option the lab needs")
        return 0
    sys.stdout.write(fragment(args.debug))
    return 0


def _live_control(args: argparse.Namespace):
    """The control socket of GPU --gpu in run directory --run (default: the
    newest run whose device server answers)."""
    from .trace_ctl import TraceControl
    paths = Paths.default()
    if args.run:
        runs = [Path(args.run)]
    else:
        runs = sorted((p for p in paths.runs.glob("*") if p.is_dir()), reverse=True)
    for run in runs:
        ctl = TraceControl(run / f"gpu{args.gpu}.ctl", timeout=5)
        if ctl.path.exists() and (args.run or ctl.alive()):
            return ctl
    where = args.run or paths.runs
    raise HmmgpuError(f"no running device server for gpu{args.gpu} in {where} "
                      "(boot a lab first, e.g. 'hmmgpu boot')")


def cmd_trace_control(args: argparse.Namespace) -> int:
    ctl = _live_control(args)
    if args.tcmd == "start":
        out = Path(args.file).resolve() if args.file else None
        s = ctl.start(out, args.capacity)
        print(f"hmmgpu: gpu{args.gpu} tracing " + (f"into {out}" if out else
              f"in memory (newest {s['capacity']} records; 'hmmgpu trace dump FILE')"))
    elif args.tcmd == "stop":
        s = ctl.stop()
        print(f"hmmgpu: gpu{args.gpu} stopped: {s['recorded']} records, {s['dropped']} dropped")
    elif args.tcmd == "mark":
        print(f"hmmgpu: gpu{args.gpu} mark {ctl.mark(args.text)}")
    elif args.tcmd == "dump":
        out = Path(args.file).resolve()
        print(f"hmmgpu: gpu{args.gpu}: {ctl.dump(out)} records into {out}")
    else:
        print(json.dumps(ctl.status()))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    """Start, list or remove fault injections in a running GPU."""
    ctl = _live_control(args)
    if args.kind == "list":
        for inj in ctl.injections():
            print(json.dumps(inj))
        return 0
    if args.kind == "clear":
        print(f"hmmgpu: gpu{args.gpu}: {ctl.uninject(args.id)} injection(s) removed")
        return 0
    scope = {k: getattr(args, k) for k in ("queue", "ctx", "start", "end", "vector", "count",
                                           "probability", "delay_us")
             if getattr(args, k) is not None}
    inj = ctl.inject(args.kind, **scope)
    print(f"hmmgpu: gpu{args.gpu}: injection {inj['id']}: {json.dumps(inj)}")
    return 0


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _load(path: str):
    from ..device.trace import load
    try:
        return load(path)
    except FileNotFoundError:
        raise HmmgpuError(f"no such trace file: {path}") from None
    except ValueError as e:
        raise HmmgpuError(str(e)) from None


def cmd_trace_summary(args: argparse.Namespace) -> int:
    from .tracetools import summary
    print(summary(_load(args.file), args.file))
    return 0


def cmd_trace_export(args: argparse.Namespace) -> int:
    from .cputrace import CPU_FILE, bar_accesses
    from .tracetools import write_perfetto
    out = Path(args.output or Path(args.files[0]).with_suffix(".perfetto.json"))
    run = Path(args.cpu) if args.cpu else Path(args.files[0]).parent
    cpu = None
    if (run / CPU_FILE).exists():
        try:
            cpu = bar_accesses(run)
        except (OSError, ValueError) as e:
            raise HmmgpuError(f"CPU trace in {run}: {e}") from None
    elif args.cpu:
        raise HmmgpuError(f"no {CPU_FILE} in {run} (boot with --cpu-trace under TCG)")
    write_perfetto([(Path(f).stem, _load(f)) for f in args.files], out, cpu)
    extra = f", with {len(cpu)} guest CPU accesses to the BARs" if cpu else ""
    print(f"hmmgpu: wrote {out}{extra} (open it in the Perfetto UI)")
    return 0


def cmd_trace_diff(args: argparse.Namespace) -> int:
    from .tracetools import diff
    print(diff(_load(args.a), _load(args.b), (Path(args.a).stem, Path(args.b).stem)))
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="hmmgpu", description="Emulated HMM GPU lab for Linux drivers")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every QEMU, host and guest command")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

    s = sub.add_parser("setup", help="provision toolbox, libvfio-user, guest image (idempotent)")
    s.add_argument("--pins", choices=["locked", "strict", "latest"], default=None,
                   help="locked (default, $HMMGPU_PINS): the versions in hmmgpu.lock, falling "
                   "back to the newest (reported) when the archive dropped one; strict: stop "
                   "instead; latest: ignore the lock")
    s.add_argument("--print-versions", action="store_true",
                   help="show what hmmgpu.lock pins and what is installed, then exit")
    s.add_argument("--update-lock", action="store_true",
                   help="write what is installed into hmmgpu.lock (after --pins latest)")
    s.add_argument("--debian-kernel", metavar="FLAVOUR",
                   help="also fetch another Debian flavour of the pinned kernel (e.g. amd64) "
                        "and print the --kernel/--modules that boot it")
    s.set_defaults(fn=cmd_setup)

    accel = {"choices": ["auto", "kvm", "tcg"], "default": "auto",
             "help": "accelerator (auto: KVM when a probe boots a guest, else TCG)"}

    kern = ArgumentParser(add_help=False)
    kern.add_argument("--accel", **accel)
    kern.add_argument("--kernel", metavar="PATH",
                      help="boot this kernel: a built kernel tree, or a bzImage with --modules "
                           "(default: the pinned Debian kernel)")
    kern.add_argument("--modules", metavar="DIR",
                      help="the /lib/modules/<release> directory of a --kernel bzImage")
    kern.add_argument("--module", metavar="FILE.ko", action="append",
                      help="load your module in the guest before the command (repeatable, "
                           "in order; its dmesg is checked like ours)")
    kern.add_argument("--share", metavar="DIR",
                      help="share this host directory read-write at /host in the guest")
    kern.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="stop the whole run after this long (non-zero exit)")
    kern.add_argument("--gdb", type=int, nargs="?", const=0, metavar="PORT",
                      help="start QEMU's gdb stub (on PORT, else a free port; implies "
                           "nokaslr) and print the gdb command")
    kern.add_argument("--append", metavar="ARGS", default="",
                      help="extra guest kernel command line (e.g. "
                           "sysctl.kernel.hung_task_timeout_secs=10)")
    kern.add_argument("--no-fail-fast", action="store_true",
                      help="keep the VM running after a guest Oops/panic/hung task instead "
                           "of ending the run at once")
    kern.add_argument("--no-cpu-placement", action="store_true",
                      help="leave the device servers and QEMU's vfio-user I/O threads where "
                           "the scheduler puts them (default: servers on the last CPU, the "
                           "I/O threads on the others)")
    kern.add_argument("--server-poll-us", type=int, metavar="US",
                      help="how long each device server busy-polls for the next message "
                           "before it sleeps (default: the server's, 200; 0: never)")

    s = sub.add_parser("boot", parents=[kern],
                       help="boot the lab VM, print its PCI devices, run a command")
    s.add_argument("--gpus", type=int, default=1, help="emulated GPUs to attach")
    s.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB")
    s.add_argument("--vram", type=int, default=1024, help="VRAM per GPU in MiB")
    s.add_argument("--trace", action="store_true",
                   help="record each GPU's DMA trace from the start into the run directory")
    s.add_argument("--hold", action="store_true", help="keep the VM running until Ctrl-C")
    s.add_argument("--cpu-trace", action="store_true",
                   help="record guest CPU accesses to the GPU BARs with their PCs (TCG only)")
    s.add_argument("command", nargs="?",
                   help="guest shell command to run over SSH (its exit status is ours)")
    s.set_defaults(fn=cmd_boot)

    s = sub.add_parser("selftest", parents=[kern], help="run the kernel's hmm-tests in the lab VM")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--reference", action="store_true",
                      help="against the kernel's own test_hmm.ko (the baseline) only")
    mode.add_argument("--compare", action="store_true",
                      help="against the emulated GPUs, then test_hmm.ko, side by side")
    s.add_argument("--spm", action=argparse.BooleanOptionalAction, default=None,
                   help="reserve guest RAM as special-purpose memory for test_hmm.ko, so its "
                        "coherent cases run too (default: on with --compare)")
    s.add_argument("hmm_tests_args", nargs=argparse.REMAINDER,
                   help="arguments passed to hmm-tests after '--', e.g. -- -t open_close")
    s.set_defaults(fn=cmd_selftest)

    s = sub.add_parser("demo", parents=[kern],
                       help="the main job: boot with the GPU, poke it, run selftests")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("dev", parents=[kern],
                       help="the edit loop: keep the VM up; on each save rebuild, reload the "
                            "module and rerun the chosen hmm-tests cases")
    s.add_argument("--dir", help="your module directory with its own Kbuild (default: "
                   "hmmgpu's guest/driver)")
    s.add_argument("--gpus", type=int, default=2, help="emulated GPUs to attach (default 2)")
    s.add_argument("--run", metavar="CMD", help="run this guest command after each reload "
                   "instead of hmm-tests")
    s.add_argument("--cycles", type=int, help=argparse.SUPPRESS)  # tests: stop after N
    s.add_argument("hmm_tests_args", nargs=argparse.REMAINDER,
                   help="the hmm-tests cases after '--': -- -t open_close -t anon_read")
    s.set_defaults(fn=cmd_dev)

    s = sub.add_parser("dump", help="write a running lab's guest memory (ELF or kdump) "
                       "for drgn and crash")
    s.add_argument("--run", help="run directory of the lab (default: the newest live one)")
    s.add_argument("-o", "--output", help="the dump file (default: RUN/vmcore.FORMAT)")
    s.add_argument("--format", default="elf", help="elf (default; drgn and crash), "
                   "kdump-raw-zlib|lzo|snappy (compressed, crash), kdump-zlib|lzo|snappy "
                   "(flattened: makedumpfile -R first)")
    s.set_defaults(fn=cmd_dump)

    s = sub.add_parser("kconfig", help="the kernel config fragment the lab needs "
                       "(for scripts/kconfig/merge_config.sh)")
    s.add_argument("--debug", action="store_true",
                   help="add the debug profile: KASAN, lockdep, DEBUG_VM, DEBUG_PAGEALLOC, "
                        "DEBUG_OBJECTS")
    s.add_argument("--check", metavar="CONFIG",
                   help="instead, check a .config (or a tree) for what the lab needs")
    s.set_defaults(fn=cmd_kconfig)

    s = sub.add_parser("device", help="the device server")
    dsub = s.add_subparsers(dest="dcmd", required=True, parser_class=ArgumentParser)
    d = dsub.add_parser("serve", help="serve one emulated GPU on a vfio-user socket")
    d.add_argument("--socket", required=True)
    d.add_argument("--log-file")
    d.add_argument("--no-msix", action="store_true", help="no MSI-X (allows device_del)")
    d.add_argument("--vram", type=int, default=1024, help="VRAM in MiB")
    d.set_defaults(fn=cmd_device_serve)

    where = ArgumentParser(add_help=False)  # which running GPU: inject, trace
    where.add_argument("--run", help="run directory of the lab (default: the newest live one)")
    where.add_argument("--gpu", type=int, default=0, help="GPU index (default 0)")
    s = sub.add_parser("inject", parents=[where],
                       help="make a running GPU misbehave on purpose (docs/hardware.md)")
    s.add_argument("kind", choices=["dma_error", "hang", "irq_lost", "irq_delay", "slow",
                                    "gone", "fault_buffer_full", "list", "clear"],
                   help="the injection, or list / clear (all, or --id)")
    for name, what in (("queue", "only on this queue (16: the kernel queue)"),
                       ("ctx", "only for this context"),
                       ("start", "dma_error: first bus address"),
                       ("end", "dma_error: end of the bus-address range"),
                       ("vector", "irq_lost: only this MSI-X vector"),
                       ("count", "fire at most this many times"),
                       ("delay_us", "slow: added time per command; irq_delay: how late, "
                                    "microseconds"),
                       ("id", "clear: only this injection")):
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_int, help=what)
    s.add_argument("--probability", type=float, help="fire on this share of chances (0-1]")
    s.set_defaults(fn=cmd_inject)

    s = sub.add_parser("trace", help="DMA traces: control a running GPU, read trace files")
    tsub = s.add_subparsers(dest="tcmd", required=True, parser_class=ArgumentParser)
    t = tsub.add_parser("start", parents=[where], help="start recording (streamed to FILE, "
                        "else kept in memory)")
    t.add_argument("file", nargs="?", help="stream the trace into this file")
    t.add_argument("--capacity", type=int, help="records held in memory (default 1048576)")
    t.set_defaults(fn=cmd_trace_control)
    t = tsub.add_parser("stop", parents=[where], help="stop recording (closes a streamed file)")
    t.set_defaults(fn=cmd_trace_control)
    t = tsub.add_parser("mark", parents=[where], help="put a named mark into the trace")
    t.add_argument("text")
    t.set_defaults(fn=cmd_trace_control)
    t = tsub.add_parser("dump", parents=[where], help="write the records held in memory")
    t.add_argument("file")
    t.set_defaults(fn=cmd_trace_control)
    t = tsub.add_parser("status", parents=[where], help="recording state and counts (JSON)")
    t.set_defaults(fn=cmd_trace_control)
    t = tsub.add_parser("summary", help="bytes per direction and context, faults/s, hot pages")
    t.add_argument("file")
    t.set_defaults(fn=cmd_trace_summary)
    t = tsub.add_parser("export", help="export for the Perfetto UI (Chrome trace JSON)")
    t.add_argument("--perfetto", action="store_true", required=True,
                   help="the format (the only one)")
    t.add_argument("-o", "--output", help="output file (default: FILE.perfetto.json)")
    t.add_argument("--cpu", metavar="RUN_DIR",
                   help="merge the TCG plugin's CPU trace of this run (default: the first "
                        "file's directory, when it has one)")
    t.add_argument("files", nargs="+", help="trace files, one process each (e.g. gpu0, gpu1)")
    t.set_defaults(fn=cmd_trace_export)
    t = tsub.add_parser("diff", help="compare two traces")
    t.add_argument("a")
    t.add_argument("b")
    t.set_defaults(fn=cmd_trace_diff)

    s = sub.add_parser("hwdef", help="print (or --write) the generated C headers")
    s.add_argument("--write", action="store_true", help=f"write {HEADER.relative_to(REPO)} and "
                   f"{PLUGIN_HEADER.relative_to(REPO)}")
    s.set_defaults(fn=cmd_hwdef)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except HmmgpuError as e:
        print(f"hmmgpu: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. an unwritable cache directory
        print(f"hmmgpu: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hmmgpu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

