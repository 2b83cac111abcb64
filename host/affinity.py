"""Keep the device servers and QEMU's vfio-user I/O threads on different CPUs.

Each MMIO access is a vfio-user round trip: the vCPU thread sends the
request and sleeps, the device server answers, and QEMU's "IO vfio-user"
thread receives the reply and wakes the vCPU. The reply is a synchronous
wake-up, so the scheduler puts the I/O thread on the server's CPU, where it
preempts the server (host sched_switch trace, 2-CPU host) — in the middle of
the command the server runs once its reply is out. With the servers on one
CPU and the I/O threads on the others, fault_bench's READ took 40-41 us
against 51-52 us, and the faulting one 105-110 against 132-137 us (the same
VM, rounds alternating). vCPU threads are left free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

IO_THREAD_PREFIX = "IO vfio-user"


def split(cpus: Iterable[int]) -> tuple[set[int], set[int]] | None:
    """(the servers' CPUs, the I/O threads' CPUs) out of the CPUs we may use:
    the highest for the servers, the rest for the I/O threads; None with one CPU."""
    allowed = sorted(set(cpus))
    if len(allowed) < 2:
        return None
    return {allowed[-1]}, set(allowed[:-1])


def threads(pid: int) -> list[tuple[int, str]]:
    """(tid, name) of each thread of a live process; [] once it is gone."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue  # exited meanwhile
            out.append((int(tid), name))
    except OSError:
        return []
    return out


def _pin(tid: int, cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(tid, cpus)
        return True
    except OSError:  # the thread exited, or the CPU set is not ours to use
        return False


def separate(servers: Iterable[int], qemu: int) -> str | None:
    """Pin every thread of the server processes to one CPU and QEMU's
    vfio-user I/O threads to the others (threads created later inherit their
    creator's CPUs). Returns what was done, or None when there is nothing to
    do (one CPU, or no I/O thread yet)."""
    parts = split(os.sched_getaffinity(0))
    if parts is None:
        return None
    mine, theirs = parts
    io = [tid for tid, name in threads(qemu) if name.startswith(IO_THREAD_PREFIX)]
    if not io:
        return None
    pinned = sum(_pin(tid, mine) for pid in servers for tid, _ in threads(pid))
    moved = sum(_pin(tid, theirs) for tid in io)
    return (f"device servers ({pinned} threads) on CPU {min(mine)}, "
            f"QEMU's {moved} vfio-user I/O thread(s) on CPUs {sorted(theirs)}")
