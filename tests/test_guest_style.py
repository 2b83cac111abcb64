"""The guest C code is kernel style: checkpatch from the same Linux source."""

from __future__ import annotations

import shutil
import subprocess
import sys

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


DRIVER = sorted((REPO / "guest" / "driver").glob("*.[ch]"))


@pytest.mark.parametrize("source", DRIVER, ids=lambda p: str(p.relative_to(REPO)))
def test_doc_sections_are_kernel_doc(paths: Paths, source) -> None:
    """Every "DOC:" section is one kernel-doc finds (/** DOC: title), so the
    driver's documentation can be pulled into a kernel-doc build."""
    titles = [line.split("DOC:", 1)[1].strip() for line in source.read_text().splitlines()
              if "DOC:" in line]
    if not titles:
        pytest.skip(f"{source.name} has no DOC: section")
    kdoc = paths.linux_src / "tools" / "docs" / "kernel-doc"
    for title in titles:
        r = subprocess.run([sys.executable, str(kdoc), "-rst", "-function", title, str(source)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip(), f"kernel-doc does not see DOC: {title} in {source.name}"
