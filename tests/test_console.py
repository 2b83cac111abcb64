"""Spotting guest kernel failures in a console log."""

from __future__ import annotations

from pathlib import Path

from hmmgpu.host.console import Console

WARN = """[    5.1] hmmgpu_oops: loading
[    5.2] ------------[ cut here ]------------
[    5.2] hmmgpu_oops: deliberate warning
[    5.2] WARNING: CPU: 1 PID: 120 at hmmgpu_oops.c:22 hmmgpu_oops_init+0x1d/0x30
[    5.2] Call Trace:
"""


def test_warning_is_found_with_an_excerpt(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[    1.0] Linux version 7.3\n" + WARN)
    (f,) = Console(log).failures()
    assert f.line.startswith("[    5.2] WARNING: CPU: 1")
    assert "deliberate warning" in f.excerpt


def test_only_output_after_the_offset_counts(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(WARN)
    c = Console(log)
    since = c.size()
    with open(log, "a") as f:
        f.write("[    9.0] all quiet\n")
    assert c.failures(since) == []
    assert len(c.failures()) == 1
