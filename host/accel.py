"""Choosing the accelerator: KVM only when it really runs a guest.

/dev/kvm can exist and still fail every guest (a PVM host: QEMU reports a KVM
internal error and pauses). So we boot the lab kernel under KVM for a few
seconds and require its first console line. The verdict is cached per host
boot (boot_id) in the cache directory.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger("hmmgpu")

PROBE_SECONDS = 10


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_works(qemu: list[str], env: dict[str, str], kernel: Path, cache: Path) -> bool:
    verdict_file = cache / "kvm-probe"
    boot_id = _boot_id()
    if verdict_file.exists():
        saved_boot, _, verdict = verdict_file.read_text().partition(" ")
        if saved_boot == boot_id:
            return verdict.strip() == "yes"
    ok = _probe(qemu, env, kernel)
    cache.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(f"{boot_id} {'yes' if ok else 'no'}\n")
    return ok


def _probe(qemu: list[str], env: dict[str, str], kernel: Path) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.info("KVM probe: /dev/kvm not usable")
        return False
    cmd = [*qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nographic", "-nodefaults",
           "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
           "-append", "console=ttyS0 panic=-1 earlyprintk=serial,ttyS0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env={**os.environ, **env})
    os.set_blocking(p.stdout.fileno(), False)
    out = b""
    deadline = time.monotonic() + PROBE_SECONDS
    try:
        while time.monotonic() < deadline and p.poll() is None:
            chunk = p.stdout.read()
            if chunk:
                out += chunk
                if b"Linux version" in out:
                    log.info("KVM probe: guest kernel started under KVM")
                    return True
                if b"KVM internal error" in out:
                    break
            time.sleep(0.05)
        log.info("KVM probe failed: %s", out.decode(errors="replace")[-300:].strip())
        return False
    finally:
        p.kill()
        p.wait()
