"""The edit loop on a real VM: a module directory with its own Kbuild (a copy
of hmmgpu's driver, as a user's out-of-tree driver would be), watched; a save
rebuilds it, reloads it in the running guest and reruns hmm-tests cases."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from hmmgpu.host.devloop import DevLoop
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.paths import REPO

pytestmark = pytest.mark.vm

CASES = ["open_close", "anon_read", "migrate"]
MARKER = 'pr_info("hmmgpu: edited in the dev loop\\n");'


def users_driver(paths, where: Path) -> Path:
    shutil.copytree(REPO / "guest", where / "guest",
                    ignore=shutil.ignore_patterns("*.o", "*.ko", "*.mod*", ".*"))
    shutil.copy(paths.linux_src / "lib" / "test_hmm_uapi.h", where / "guest" / "driver")
    return where / "guest" / "driver"


def test_a_save_rebuilds_reloads_and_reruns_the_cases(paths, tmp_path: Path) -> None:
    src = users_driver(paths, tmp_path)
    before = sorted(p.name for p in src.iterdir())
    share = tmp_path / "dev"
    share.mkdir()
    reports: list[str] = []
    with Lab(LabConfig(gpus=2, memory_mb=2048, share=share), paths) as lab:
        lab.boot()
        loop = DevLoop(lab, src, CASES, out=reports.append)
        watcher = threading.Thread(target=loop.watch, kwargs={"cycles": 2, "poll_s": 0.2})
        watcher.start()
        deadline = time.monotonic() + 300
        while not any(r.startswith("watching") for r in reports):
            assert watcher.is_alive() and time.monotonic() < deadline, reports
            time.sleep(0.2)
        main = src / "hmmgpu_main.c"
        text = main.read_text()
        main.write_text(text.replace("\tret = alloc_chrdev_region(",
                                     f"\t{MARKER}\n\tret = alloc_chrdev_region(", 1))
        watcher.join(300)
        assert not watcher.is_alive()
        dmesg = lab.ssh("dmesg").stdout

        # a save that does not compile: the build's error, no reload
        main.write_text(text.replace("\tret = alloc_chrdev_region(", "\tret = nonsense(", 1))
        broken = loop.cycle()
        still = lab.ssh("test -d /sys/module/hmmgpu", check=False).exit_code
    print("\n".join(reports))
    first, second = reports[0], reports[2]
    assert first.startswith("--- initial build: PASS"), first
    assert second.startswith("--- changed hmmgpu_main.c: PASS"), second
    assert "fail 0" in second
    assert int(re.search(r"pass (\d+)", second).group(1)) >= len(CASES), second
    assert "edited in the dev loop" in dmesg  # the rebuilt module is what runs
    assert not broken.ok and "BUILD FAILED" in broken.text and "nonsense" in broken.text
    assert still == 0  # the last good module stays loaded
    # the user's directory holds only what they wrote: the objects went to the cache
    assert sorted(p.name for p in src.iterdir()) == before
    assert (share / "module" / "hmmgpu.ko").exists()
