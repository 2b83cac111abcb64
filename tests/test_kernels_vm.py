"""The lab on a kernel of the user's choosing, with their module and files,
and what CI and a debugger need from it: a second real kernel through
--kernel, --module and --share through the CLI, the guest command's exit
status, fail-fast on an Oops or a hang, --timeout, the gdb stub and a memory
dump that drgn reads."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import drgn
import pytest
from clirun import hmmgpu
from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
from test_selftest_vm import DEVICE_PRIVATE, check_device_private

from hmmgpu.host.errors import GuestKernelError
from hmmgpu.host.flavours import fetch_flavour
from hmmgpu.host.kbuild import make_modules
from hmmgpu.host.kernel import default_kernel, elf_symbols, modinfo, read_module, resolve_kernel
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.selftest import SELFTEST_MEMORY_MB, run_in_lab
from hmmgpu.host.ssh import free_port
from hmmgpu.host.toolbox import Toolbox

pytestmark = pytest.mark.vm

HELLO_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
static int __init hello_init(void)
{
	pr_info("hello_user: loaded by the lab\\n");
	return 0;
}
static void __exit hello_exit(void)
{
}
module_init(hello_init);
module_exit(hello_exit);
MODULE_DESCRIPTION("a user's module for the lab's tests");
MODULE_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def generic(paths) -> tuple[Path, Path]:
    """Debian's generic (amd64) flavour of the pinned kernel: a second kernel."""
    return fetch_flavour(paths, "amd64")


def test_a_second_debian_kernel_passes_the_device_private_hmm_tests(paths, generic) -> None:
    image, mods = generic
    kernel = resolve_kernel(paths, str(image), str(mods))
    assert kernel.release != default_kernel(paths).release
    cfg = LabConfig(gpus=2, memory_mb=SELFTEST_MEMORY_MB, kernel=kernel, fail_fast=True)
    with Lab(cfg, paths) as lab:
        lab.boot()
        assert lab.ssh("uname -r").stdout.strip() == kernel.release
        built = lab.bins["hmmgpu.ko"]
        assert modinfo(read_module(built), built)["vermagic"].split()[0] == kernel.release
        result = run_in_lab(lab, "hmmgpu", DEVICE_PRIVATE)
    print(result.summary())
    check_device_private(paths, result)
    assert result.junit_path.exists()


def build_user_module(paths, where: Path) -> Path:
    where.mkdir()
    (where / "hello_user.c").write_text(HELLO_C)
    (where / "Kbuild").write_text("obj-m := hello_user.o\n")
    make_modules(Toolbox(paths.toolbox), default_kernel(paths), [where], where / "build.log",
                 binds=[where])
    return where / "hello_user.ko"


def test_boot_loads_your_module_shares_your_directory_and_returns_the_guest_status(
        paths, tmp_path: Path) -> None:
    ko = build_user_module(paths, tmp_path / "mod")
    share = tmp_path / "share"
    share.mkdir()
    (share / "in.txt").write_text("written on the host\n")
    tool = share / "mytool"
    tool.write_text("#!/bin/sh\necho \"mytool ran in $(uname -n)\"\n")
    tool.chmod(0o755)
    cmd = ("dmesg | grep 'hello_user: loaded by the lab' && cat /host/in.txt && "
           "/host/mytool && echo written-in-the-guest > /host/out.txt && exit 7")
    r = hmmgpu("boot", "--gpus", "0", "--module", str(ko), "--share", str(share), cmd,
               timeout=300)
    assert r.returncode == 7, r.stdout + r.stderr
    assert "hello_user: loaded by the lab" in r.stdout
    assert "written on the host" in r.stdout and "mytool ran in hmmgpu-guest" in r.stdout
    assert (share / "out.txt").read_text() == "written-in-the-guest\n"


def test_a_module_of_another_kernel_is_refused_before_boot(paths, generic) -> None:
    _image, mods = generic
    other = next((mods / "kernel" / "net" / "core").glob("failover.ko*"))
    r = hmmgpu("boot", "--gpus", "0", "--module", str(other), "true", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "vermagic" in last and "-amd64" in last, r.stderr


def test_fail_fast_ends_the_run_seconds_after_an_oops(paths) -> None:
    with Lab(LabConfig(gpus=0, memory_mb=512, fail_fast=True), paths) as lab:
        lab.boot()
        t0 = time.monotonic()
        with pytest.raises(GuestKernelError) as e:
            # without fail-fast the shell would sleep on after insmod died
            lab.ssh(f"insmod {lab.guest_bin('hmmgpu_oops.ko')} mode=oops; sleep 600",
                    check=False)
        took = time.monotonic() - t0
        assert not lab.qemu_alive()
    assert took < 30, f"{took:.0f} s"
    assert "NULL pointer dereference" in e.value.excerpt
    assert "guest kernel" in lab.killed_by_watchdog


def test_a_warning_while_fail_fast_is_suspended_is_reported_and_the_run_goes_on(paths) -> None:
    """What the reference's run in coherent mode relies on: its own WARN is
    its result, not the end of the comparison; afterwards fail-fast is back."""
    with Lab(LabConfig(gpus=0, memory_mb=512, fail_fast=True), paths) as lab:
        lab.boot()
        oops = f"insmod {lab.guest_bin('hmmgpu_oops.ko')} mode=warn"
        with lab.fail_fast_suspended(), pytest.raises(GuestKernelError) as e:
            lab.ssh(oops)
        assert "deliberate warning" in e.value.excerpt
        time.sleep(2)  # four watchdog ticks
        assert lab.qemu_alive() and lab.ssh("rmmod hmmgpu_oops; echo up").stdout == "up\n"
        with pytest.raises(GuestKernelError):
            lab.ssh(f"{oops}; sleep 600", check=False)
        assert not lab.qemu_alive()
    assert "guest kernel" in lab.killed_by_watchdog


def test_fail_fast_ends_a_hang_with_the_hung_task_report(paths) -> None:
    cfg = LabConfig(gpus=0, memory_mb=512, fail_fast=True,
                    kernel_args="sysctl.kernel.hung_task_timeout_secs=5")
    with Lab(cfg, paths) as lab:
        lab.boot()
        t0 = time.monotonic()
        with pytest.raises(GuestKernelError) as e:
            lab.ssh(f"insmod {lab.guest_bin('hmmgpu_oops.ko')} mode=hang", check=False)
        took = time.monotonic() - t0
    assert took < 60, f"{took:.0f} s"
    assert "blocked for more than 5 seconds" in str(e.value)


def test_timeout_ends_the_whole_run_with_a_non_zero_exit() -> None:
    t0 = time.monotonic()
    r = hmmgpu("boot", "--gpus", "0", "--timeout", "45", "sleep 600", timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ran longer than 45 s (--timeout)" in r.stderr
    assert took < 90, f"{took:.0f} s"


def rsp(sock: socket.socket, payload: str) -> str:
    """One GDB remote-protocol request and its reply (ack mode)."""
    sock.sendall(f"${payload}#{sum(payload.encode()) % 256:02x}".encode())
    buf = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the gdb stub closed the connection"
        buf += chunk
        start = buf.find(b"$")
        end = buf.find(b"#", start + 1)
        if start >= 0 and end >= 0 and len(buf) >= end + 3:
            sock.sendall(b"+")
            return buf[start + 1:end].decode()


def test_gdb_stub_and_a_memory_dump_read_the_running_kernel(paths, tmp_path: Path) -> None:
    port = free_port()
    with Lab(LabConfig(gpus=1, memory_mb=1024, gdb_port=port), paths) as lab:
        lab.boot()
        lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')}")
        version = lab.ssh("cat /proc/version").stdout
        banner = int(lab.ssh("grep ' linux_banner$' /proc/kallsyms").stdout.split()[0], 16)
        text = lab.ssh("cat /sys/module/hmmgpu/sections/.text").stdout.strip()
        section, offset, _size = elf_symbols(read_module(lab.bins["hmmgpu.ko"]))["hmmgpu_devt"]
        devt_addr = offset + int(lab.ssh(f"cat /sys/module/hmmgpu/sections/{section}").stdout, 16)
        major = int(lab.ssh("awk '$2 == \"hmm_dmirror\" {print $1}' /proc/devices").stdout)

        gdb = lab.gdb_command()
        assert f"target remote 127.0.0.1:{port}" in gdb
        assert f"add-symbol-file {lab.bins['hmmgpu.ko']} {text}" in gdb
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            assert rsp(s, "?").startswith(("S", "T"))  # the stub stopped the guest
            mem = bytes.fromhex(rsp(s, f"m{banner:x},{64:x}"))
            s.sendall(b"$D#44")  # detach: the guest runs on
        assert mem.decode() == version[:64]
        assert lab.ssh("echo alive").stdout == "alive\n"

        core = lab.dump(tmp_path / "vmcore.elf")
        r = hmmgpu("dump", "--run", str(lab.run_dir), "-o", str(tmp_path / "vmcore.kdump"),
                   "--format", "kdump-raw-zlib", timeout=300)
        assert r.returncode == 0, r.stderr
        assert "drgn -c" in r.stdout
        assert (tmp_path / "vmcore.kdump").read_bytes()[:8] == b"KDUMP   "

    # drgn on the ELF dump, with only what the dump carries (vmcoreinfo
    # and its kallsyms; the Debian kernel has no vmlinux with DWARF here)
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    prog.register_symbol_finder("vmlinux", load_vmlinux_kallsyms(prog), enable_index=0)
    sym = prog.symbol("linux_banner")
    assert prog.read(sym.address, len(version)).decode() == version
    init = prog.symbol("init_task")
    assert b"swapper/0\0" in prog.read(init.address, init.size)
    # hmmgpu's own state, placed by hmmgpu.ko's symbol table: its char major
    assert struct.unpack("<I", prog.read(devt_addr, 4))[0] >> 20 == major
