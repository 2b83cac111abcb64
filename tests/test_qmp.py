"""host/qmp.py: the bounded event log, and typed errors from a real QEMU
(no guest: `-machine none`)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmmgpu.host.errors import VmError
from hmmgpu.host.paths import Paths
from hmmgpu.host.qmp import EventLog, Qmp, QmpCommandError, QmpDisconnected, QmpTimeout
from hmmgpu.host.toolbox import Toolbox


def test_the_event_log_keeps_the_newest_events_and_marks_stay_valid() -> None:
    log = EventLog(keep=3)
    for i in range(5):
        log.append({"event": "E", "data": {"i": i}})
    assert len(log) == 3 and log.received == 5
    assert [e["data"]["i"] for e in log.since(0)] == [2, 3, 4]  # 0 and 1 are gone
    assert [e["data"]["i"] for e in log.since(4)] == [4]
    assert log.since(5) == []


def test_waiting_after_a_mark_sees_only_later_events() -> None:
    log = EventLog(keep=2)
    log.append({"event": "DEVICE_DELETED"})
    mark = log.received
    assert log.wait("DEVICE_DELETED", 0.05, lambda _e: True, mark) is None
    t = threading.Timer(0.1, log.append, [{"event": "DEVICE_DELETED", "data": {"n": 2}}])
    t.start()
    got = log.wait("DEVICE_DELETED", 5, lambda _e: True, mark)
    t.join()
    assert got == {"event": "DEVICE_DELETED", "data": {"n": 2}}


@pytest.fixture
def qemu(paths: Paths, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Qmp]]:
    tb = Toolbox(paths.toolbox)
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([*tb.qemu_command(), "-machine", "none", "-nodefaults",
                             "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
                            env={**os.environ, **tb.qemu_env()}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = Qmp(sock, "test")
    try:
        yield proc, qmp
    finally:
        qmp.close()
        proc.kill()
        proc.wait()


def test_a_refused_command_keeps_qmps_error_class(qemu) -> None:
    _proc, qmp = qemu
    assert qmp.cmd("query-status")["status"] in ("running", "prelaunch")
    with pytest.raises(QmpCommandError) as e:
        qmp.cmd("device_del", id="no-such-device")
    assert e.value.error_class == "DeviceNotFound"
    assert "no-such-device" in e.value.desc and isinstance(e.value, VmError)


def test_qemu_going_away_is_a_disconnect_not_a_refusal(qemu) -> None:
    proc, qmp = qemu
    proc.kill()
    proc.wait()
    with pytest.raises(QmpDisconnected):
        qmp.cmd("query-status", timeout=5)


def test_no_event_in_time_is_a_timeout(qemu) -> None:
    _proc, qmp = qemu
    with pytest.raises(QmpTimeout):
        qmp.wait_event("DEVICE_DELETED", 0.2, since=qmp.mark())
