"""Trace tools on real recordings of the in-process device: summary, Perfetto
export, diff; the CLI on files and on a live device server's control socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import hmmgpu
from engine_rig import RW, Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device import trace
from hmmgpu.device.hwdef import Aperture, Opcode
from hmmgpu.host import tracetools
from hmmgpu.host.errors import HmmgpuError
from hmmgpu.host.trace_ctl import TraceControl


def record(tmp_path: Path, name: str, pages: int) -> Path:
    """A trace of one context reading `pages` pages through faults and replays."""
    rig = Rig()
    tr = rig.gpu.engine.trace
    tr.start(tmp_path / name)
    tr.mark("go")
    dst = rig.drv.alloc(pages * hw.PAGE_SIZE)
    flags = hw.cmd_flags(src=Aperture.VA, dst=Aperture.SYS)
    rig.drv.submit(2, Opcode.COPY, (0x7000_0000, dst, pages * hw.PAGE_SIZE), flags=flags)
    rig.run()
    for i in range(pages):
        rig.drv.map(2, 0x7000_0000 + i * hw.PAGE_SIZE, rig.page(i), RW)
    rig.gpu.mmio_write(hw.queue_reg(2, hw.QReg.CONTROL), 4, hw.QueueControl.REPLAY)
    rig.run()
    tr.stop()
    return tmp_path / name


def test_summary_counts_bytes_faults_and_hot_pages(tmp_path: Path) -> None:
    t = trace.load(record(tmp_path, "a.hmmtrace", 4))
    s = tracetools.stats(t)
    assert s["bytes_by_direction"]["read system"] == 4 * hw.PAGE_SIZE
    # the COPY's 16 KiB plus the fault records the device wrote
    assert s["bytes_by_direction"]["write system"] >= 4 * hw.PAGE_SIZE
    assert s["bytes_by_context"]["ctx 2"] == 8 * hw.PAGE_SIZE
    assert s["faults"] == 4 and s["commands"]["COPY"] == 1
    hot = {v for c, v, n in s["hottest_pages"] if c == 2}
    assert hot == {0x7000_0000 + i * hw.PAGE_SIZE for i in range(4)}
    text = tracetools.summary(t, "a")
    assert "faults: 4" in text and "marks: 1: go" in text


def test_perfetto_export_has_queue_tracks_and_fault_to_replay_flows(tmp_path: Path) -> None:
    t = trace.load(record(tmp_path, "a.hmmtrace", 2))
    ev = tracetools.perfetto([("gpu0", t)])["traceEvents"]
    names = {e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    assert {"queue 2", "MMIO", "MMU"} <= names
    copy = [e for e in ev if e["ph"] == "X" and e["name"] == "COPY"]
    assert len(copy) == 1 and copy[0]["tid"] == 2 and copy[0]["args"]["status"] == "NONE"
    starts = {e["id"] for e in ev if e["ph"] == "s"}
    ends = {e["id"] for e in ev if e["ph"] == "f"}
    assert len(starts) == 2 and starts == ends  # each fault flows to the replay
    replay = next(e for e in ev if e["name"] == "replay")
    assert all(e["ts"] <= replay["ts"] for e in ev if e["ph"] == "s")


def test_diff_shows_what_changed_between_two_runs(tmp_path: Path) -> None:
    a = trace.load(record(tmp_path, "a.hmmtrace", 2))
    b = trace.load(record(tmp_path, "b.hmmtrace", 4))
    text = tracetools.diff(a, b)
    line = next(ln for ln in text.splitlines() if ln.startswith("faults "))
    assert line.split()[1:4] == ["2", "4", "+100.0%"]


def test_cli_reads_files_and_says_one_line_when_it_cannot(tmp_path: Path) -> None:
    a, b = record(tmp_path, "a.hmmtrace", 2), record(tmp_path, "b.hmmtrace", 3)
    r = hmmgpu("trace", "summary", str(a))
    assert r.returncode == 0 and "faults: 2" in r.stdout
    out = tmp_path / "x.json"
    r = hmmgpu("trace", "export", "--perfetto", "-o", str(out), str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert {e["pid"] for e in json.loads(out.read_text())["traceEvents"]} == {0, 1}
    r = hmmgpu("trace", "diff", str(a), str(b))
    assert r.returncode == 0 and "faults" in r.stdout
    for args in (["summary", str(tmp_path / "nope")], ["summary", __file__]):
        r = hmmgpu("trace", *args)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    r = hmmgpu("trace", "status", env={"HMMGPU_CACHE": str(tmp_path / "empty")})
    assert r.returncode == 1 and "no running device server" in r.stderr


def test_a_live_device_server_is_traced_through_its_control_socket(
        server_socket: Path, tmp_path: Path) -> None:
    """The real server process (server_socket fixture) with a control socket:
    start streaming, mark, stop, and the file loads; bad requests are refused."""
    ctl = TraceControl(server_socket.with_suffix(".ctl"))
    out = tmp_path / "live.hmmtrace"
    assert ctl.start(out)["streaming"] == str(out)
    assert ctl.mark("hello") == 1
    s = ctl.stop()
    assert not s["on"] and s["recorded"] >= 1
    t = trace.load(out)
    assert t.marks == {1: "hello"} and t.of_kind(trace.Kind.MARK).size == 1
    with pytest.raises(HmmgpuError, match="unknown op"):
        ctl.request("frobnicate")
    with pytest.raises(HmmgpuError, match="capacity"):
        ctl.start(capacity=-1)


def test_a_failing_test_gets_the_gpu_trace_in_its_report(server_socket: Path,
                                                          pytester: pytest.Pytester) -> None:
    """The pytest plugin against a real device server: the failing test's
    report carries the trace summary and the file is in the run directory;
    the passing test leaves no file."""
    run_dir = pytester.path / "run"
    run_dir.mkdir()
    pytester.makeconftest(f"""
import pytest
from types import SimpleNamespace
from pathlib import Path
from hmmgpu.host.trace_ctl import TraceControl
pytest_plugins = ["hmmgpu.host.pytest_plugin"]

@pytest.fixture
def lab():
    gpu = SimpleNamespace(id="gpu0", alive=True,
                          trace=TraceControl(Path({str(server_socket.with_suffix('.ctl'))!r})))
    return SimpleNamespace(gpus=[gpu], run_dir={str(run_dir)!r})
""")
    pytester.makepyfile("""
def test_passes(hmmgpu_trace):
    hmmgpu_trace.gpus[0].trace.mark("fine")

def test_fails(hmmgpu_trace):
    hmmgpu_trace.gpus[0].trace.mark("about to fail")
    assert False
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*hmmgpu DMA trace*", "*marks: 1: test *test_fails*",
                                 "*view: hmmgpu trace export --perfetto*"])
    files = list(run_dir.glob("*.hmmtrace"))
    assert [f.name for f in files] == ["trace-test_fails-gpu0.hmmtrace"]
    assert "about to fail" in trace.load(files[0]).marks.values()


def test_cli_controls_a_live_device_server(server_socket: Path, tmp_path: Path) -> None:
    """`hmmgpu trace start/mark/stop/status/dump --run DIR` against a real server."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "gpu0.ctl").symlink_to(server_socket.with_suffix(".ctl"))
    out = tmp_path / "cli.hmmtrace"
    r = hmmgpu("trace", "start", str(out), "--run", str(run))
    assert r.returncode == 0 and str(out) in r.stdout, r.stderr
    assert hmmgpu("trace", "mark", "from the CLI", "--run", str(run)).returncode == 0
    status = json.loads(hmmgpu("trace", "status", "--run", str(run)).stdout)
    assert status["on"] and status["streaming"] == str(out)
    r = hmmgpu("trace", "stop", "--run", str(run))
    assert r.returncode == 0 and "stopped" in r.stdout
    assert trace.load(out).marks == {1: "from the CLI"}
    r = hmmgpu("trace", "start", "--run", str(run))  # in memory, then dump
    assert r.returncode == 0 and "in memory" in r.stdout
    hmmgpu("trace", "mark", "kept", "--run", str(run))
    r = hmmgpu("trace", "dump", str(tmp_path / "d.hmmtrace"), "--run", str(run))
    assert r.returncode == 0 and trace.load(tmp_path / "d.hmmtrace").marks == {1: "kept"}
    r = hmmgpu("trace", "start", "--run", str(run), "--gpu", "3")
    assert r.returncode == 1 and "no running device server for gpu3" in r.stderr
