"""A thread-safe, synchronous face for qemu.qmp's async QMPClient.

The client lives in its own event-loop thread, so the harness, its watchdog
and pytest can all call `cmd()` from any thread; events are collected as they
arrive (the last EVENTS_KEPT of them) and can be awaited by name.

Errors keep their kind: QEMU refusing a command is QmpCommandError (with QMP's
error class), a lost connection QmpDisconnected, no answer in time QmpTimeout;
all are VmErrors, so the CLI prints them as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from .errors import VmError

T = TypeVar("T")
EVENTS_KEPT = 1000


class QmpCommandError(VmError):
    """QEMU answered a command with an error (qemu.qmp's ExecuteError)."""

    def __init__(self, message: str, error_class: str, desc: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.desc = desc


class QmpDisconnected(VmError):
    """The QMP connection is gone (QEMU exited or closed it)."""


class QmpTimeout(VmError):
    """QEMU did not answer in time."""


class EventLog:
    """The most recent `keep` events, numbered from 0 as they arrive, so a
    caller can take a mark and wait for an event that comes after it."""

    def __init__(self, keep: int = EVENTS_KEPT) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.received = 0  # events ever appended; the next one's number
        self._cond = threading.Condition()

    def append(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._events.append(event)
            self.received += 1
            self._cond.notify_all()

    def since(self, mark: int) -> list[dict[str, Any]]:
        """Events numbered >= mark that are still kept."""
        with self._cond:
            first = self.received - len(self._events)
            return list(self._events)[max(0, mark - first):]

    def __len__(self) -> int:
        return len(self._events)

    def wait(self, name: str, timeout: float, match: Callable[[dict[str, Any]], bool],
             since: int) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.since(since):
                    if e.get("event") == name and match(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


class Qmp:
    def __init__(self, socket: Path, name: str, connect_timeout: float = 30) -> None:
        self.name = name
        self.socket = socket
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"qmp-{name}",
                                        daemon=True)
        self._thread.start()
        self.events = EventLog()
        self.client = QMPClient(name)
        deadline = time.monotonic() + connect_timeout
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        while True:
            try:
                self._run(self.client.connect(str(socket)), timeout=5)
                break
            except (QMPError, OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    self.close()
                    raise VmError(f"{name}: cannot connect to QMP at {socket}: {e}") from e
                time.sleep(0.1)
        self._listener = EventListener()
        self.client.register_listener(self._listener)
        self._collector = self._run(self._start_collector())

    async def _start_collector(self) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._collect())

    async def _stop_collector(self) -> None:
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _collect(self) -> None:
        async for event in self._listener:
            self.events.append(dict(event))

    def mark(self) -> int:
        """A point in the event stream for wait_event(since=...)."""
        return self.events.received

    def cmd(self, command: str, timeout: float = 30, **args: Any) -> Any:
        what = f"{self.name}: QMP {command} {args or ''}".rstrip()
        try:
            return self._run(self.client.execute(command, args or None), timeout)
        except ExecuteError as e:
            raise QmpCommandError(f"{what}: {e.error_class}: {e}", e.error_class,
                                  str(e)) from e
        except TimeoutError as e:
            raise QmpTimeout(f"{what}: no answer within {timeout:.0f} s") from e
        except (QMPError, OSError) as e:
            raise QmpDisconnected(f"{what}: the connection is gone: {e or type(e).__name__}") \
                from e

    def wait_event(self, name: str, timeout: float,
                   match: Callable[[dict[str, Any]], bool] = lambda _e: True,
                   since: int = 0) -> dict[str, Any]:
        """Wait for event `name` among those received after mark() `since`."""
        e = self.events.wait(name, timeout, match, since)
        if e is None:
            raise QmpTimeout(f"{self.name}: no QMP event {name} within {timeout:.0f} s")
        return e

    def close(self) -> None:
        if self.loop.is_running():
            try:
                self._run(self.client.disconnect(), timeout=5)
            except Exception:  # noqa: BLE001 - QEMU may already be gone
                pass
            if hasattr(self, "_collector"):
                self._run(self._stop_collector(), timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


def write_dump(qmp: Qmp, path: Path, fmt: str, timeout: float = 600) -> None:
    """dump-guest-memory into `path` (the guest pauses while it is written).
    Detached, then awaited through DUMP_COMPLETED, so a large guest cannot
    run into the command timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    since = qmp.mark()
    qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{path}", format=fmt,
            detach=True)
    ev = qmp.wait_event("DUMP_COMPLETED", timeout, since=since)
    err = ev.get("data", {}).get("error")
    if err:
        raise VmError(f"dump-guest-memory into {path} failed: {err}")
