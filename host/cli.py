"""The `hmmgpu` command line.

Every subcommand provisions what is missing first (with progress), prints
where its logs went, and turns expected failures into one plain line.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import HmmgpuError
from .paths import REPO, Paths

HEADER = REPO / "guest" / "include" / "hmmgpu_hw.h"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one plain line, exit 2
        print(f"{self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def cmd_setup(args: argparse.Namespace) -> int:
    from .provision import Provisioner
    Provisioner(Paths.default(), verbose=args.verbose).ensure()
    print(f"hmmgpu: provisioned in {Paths.default().cache}")
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


def cmd_hwdef(args: argparse.Namespace) -> int:
    from ..device.hwdef import render_c_header
    text = render_c_header()
    if args.write:
        HEADER.parent.mkdir(parents=True, exist_ok=True)
        HEADER.write_text(text)
        print(f"wrote {HEADER}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    from .lab import Lab, LabConfig
    cfg = LabConfig(gpus=args.gpus, memory_mb=args.memory, accel=args.accel,
                    verbose=args.verbose, vram_mb=args.vram)
    with Lab(cfg) as lab:
        lab.boot()
        print(f"hmmgpu: VM ready in {lab.boot_seconds:.1f} s ({lab.accel}); "
              f"logs in {lab.run_dir}")
        for dev in lab.guest_pci_devices():
            print(f"  guest PCI {dev['slot']}: {dev['vendor']}:{dev['device']} "
                  f"driver={dev['driver'] or '-'}")
        if args.command:
            print(lab.ssh(args.command).stdout, end="")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import compare, run_selftest
    modes = ["reference"] if args.reference else ["hmmgpu", "reference"] if args.compare \
        else ["hmmgpu"]
    results = run_selftest(modes, accel=args.accel, verbose=args.verbose,
                           hmm_tests_args=[a for a in args.hmm_tests_args if a != "--"])
    for r in results:
        print(r.summary())
    if len(results) > 1:
        print(compare(results))
    print(f"hmmgpu: results in {', '.join(str(r.json_path) for r in results)}")
    return 0 if all(r.ok for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job today: boot the lab, show the device answers, run the
    reference selftest."""
    from .demo import run_demo
    return run_demo(accel=args.accel, verbose=args.verbose)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="hmmgpu", description="Emulated HMM GPU lab for Linux drivers")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every QEMU, host and guest command")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

    s = sub.add_parser("setup", help="provision toolbox, libvfio-user, guest image (idempotent)")
    s.set_defaults(fn=cmd_setup)

    accel = {"choices": ["auto", "kvm", "tcg"], "default": "auto",
             "help": "accelerator (auto: KVM when a probe boots a guest, else TCG)"}

    s = sub.add_parser("boot", help="boot the lab VM, print its PCI devices, run a command")
    s.add_argument("--gpus", type=int, default=1, help="emulated GPUs to attach")
    s.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB")
    s.add_argument("--vram", type=int, default=512, help="VRAM per GPU in MiB")
    s.add_argument("--accel", **accel)
    s.add_argument("command", nargs="?", help="guest shell command to run over SSH")
    s.set_defaults(fn=cmd_boot)

    s = sub.add_parser("selftest", help="run the kernel's hmm-tests in the lab VM")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--reference", action="store_true",
                      help="against the kernel's own test_hmm.ko (the baseline) only")
    mode.add_argument("--compare", action="store_true",
                      help="against the emulated GPUs, then test_hmm.ko, side by side")
    s.add_argument("hmm_tests_args", nargs=argparse.REMAINDER,
                   help="arguments passed to hmm-tests after '--', e.g. -- -t open_close")
    s.add_argument("--accel", **accel)
    s.set_defaults(fn=cmd_selftest)

    s = sub.add_parser("demo", help="the main job: boot with the GPU, poke it, run selftests")
    s.add_argument("--accel", **accel)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("device", help="the device server")
    dsub = s.add_subparsers(dest="dcmd", required=True, parser_class=ArgumentParser)
    d = dsub.add_parser("serve", help="serve one emulated GPU on a vfio-user socket")
    d.add_argument("--socket", required=True)
    d.add_argument("--log-file")
    d.add_argument("--no-msix", action="store_true", help="no MSI-X (allows device_del)")
    d.add_argument("--vram", type=int, default=512, help="VRAM in MiB")
    d.set_defaults(fn=cmd_device_serve)

    s = sub.add_parser("hwdef", help="print (or --write) the generated C header")
    s.add_argument("--write", action="store_true", help=f"write {HEADER.relative_to(REPO)}")
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

