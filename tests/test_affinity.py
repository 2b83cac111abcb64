"""host/affinity.py: which CPUs the device servers and QEMU's vfio-user I/O
threads get (the pinning itself is exercised by every VM test's Lab)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hmmgpu.host import affinity


def test_the_servers_get_the_highest_cpu_and_the_io_threads_the_rest() -> None:
    assert affinity.split([0, 1]) == ({1}, {0})
    assert affinity.split([5, 2, 7, 3]) == ({7}, {2, 3, 5})


def test_one_cpu_is_not_split() -> None:
    assert affinity.split([3]) is None
    assert affinity.split([]) is None


def test_threads_lists_each_thread_with_its_name_and_nothing_for_a_gone_process() -> None:
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        names = dict(affinity.threads(os.getpid()))
        assert t.native_id in names
        assert names[os.getpid()] == Path("/proc/self/comm").read_text().strip()
    finally:
        done.set()
        t.join()
    assert affinity.threads(2 ** 22 + 12345) == []


def test_nothing_is_pinned_without_a_qemu_io_thread() -> None:
    before = os.sched_getaffinity(0)
    # this process has no "IO vfio-user" thread: nothing moves
    assert affinity.separate([os.getpid()], os.getpid()) is None
    assert os.sched_getaffinity(0) == before
