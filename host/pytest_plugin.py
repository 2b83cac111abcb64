"""pytest plugin: attach the emulated GPUs' DMA trace to a failing test's report.

Enable it in a conftest.py with `pytest_plugins = ["hmmgpu.host.pytest_plugin"]`
and ask for the `hmmgpu_trace` fixture in tests that use a booted lab (a
fixture named `lab` holding a hmmgpu.host.lab.Lab). Each GPU then records in
flight-recorder mode (the newest records stay in memory) with a mark naming
the test; when the test fails, the traces are written to the lab's run
directory and the report gets an "hmmgpu DMA trace" section with their
summaries and paths. A passing test costs no files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..device.trace import load
from .errors import HmmgpuError
from .tracetools import summary

FLIGHT_RECORDS = 1 << 18
_LAB = pytest.StashKey[Any]()


@pytest.fixture
def hmmgpu_trace(request: pytest.FixtureRequest) -> Iterator[Any]:
    lab = request.getfixturevalue("lab")
    for gpu in lab.gpus:
        if gpu.alive:
            gpu.trace.start(capacity=FLIGHT_RECORDS)
            gpu.trace.mark(f"test {request.node.nodeid}")
    request.node.stash[_LAB] = lab
    yield lab
    for gpu in lab.gpus:
        if gpu.alive:
            try:
                gpu.trace.stop()
            except HmmgpuError:
                pass  # the server went away with the test; nothing to stop


def dump_traces(lab: Any, nodeid: str) -> list[Path]:
    """Write each live GPU's in-memory trace into the run directory."""
    name = re.sub(r"[^\w.-]+", "_", nodeid.split("::")[-1])[:80]
    out = []
    for gpu in lab.gpus:
        if not gpu.alive:
            continue
        path = Path(lab.run_dir) / f"trace-{name}-{gpu.id}.hmmtrace"
        try:
            gpu.trace.dump(path)
        except HmmgpuError:
            continue
        out.append(path)
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    lab = item.stash.get(_LAB, None)
    if lab is None or report.when != "call" or not report.failed:
        return
    paths = dump_traces(lab, item.nodeid)
    if paths:
        parts = [summary(load(p), str(p)) for p in paths]
        parts.append("view: hmmgpu trace export --perfetto " + " ".join(map(str, paths)))
        report.sections.append(("hmmgpu DMA trace", "\n\n".join(parts)))
