"""The guest C code is kernel style: checkpatch from the same Linux source."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hmmgpu.host.paths import REPO, Paths

# Kernel code only: guest/tools holds user-space programs.
SOURCES = sorted(p for d in ("driver", "testmod", "include")
                 for p in (REPO / "guest" / d).rglob("*.[ch]"))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_checkpatch_reports_no_errors_or_warnings(paths: Paths, source) -> None:
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed, and checkpatch.pl is a perl script")
    r = subprocess.run(["perl", str(paths.checkpatch), "--no-tree", "--terse", "--show-types",
                        "--ignore", "SPDX_LICENSE_TAG", "-f", str(source)],
                       capture_output=True, text=True, timeout=120)
    problems = [line for line in r.stdout.splitlines() if ": ERROR:" in line or
                ": WARNING:" in line]
    assert problems == [], "\n".join(problems)
