"""Choosing the guest kernel: --kernel/--modules resolution, the kconfig
fragment and check, module vermagic, and each bad input as one plain line.
These read the real provisioned kernel; none boots a VM."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clirun import hmmgpu

from hmmgpu.host import kconfig
from hmmgpu.host.errors import HmmgpuError
from hmmgpu.host.kernel import (
    bzimage_release,
    check_module_for,
    default_kernel,
    modinfo,
    read_module,
    resolve_kernel,
)
from hmmgpu.host.paths import Paths
from hmmgpu.host.tap import parse, to_junit
from hmmgpu.host.toolbox import Toolbox


def one_line(r) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_the_default_kernel_is_the_pinned_cloud_kernel_and_passes_the_check(paths: Paths) -> None:
    k = default_kernel(paths)
    assert k.default and k.release == Toolbox(paths.toolbox).kernel_version
    assert bzimage_release(k.image) == k.release
    kconfig.check(k.config, k.config_path)  # raises when an option is missing
    # its network modules come from its modules directory, in load order
    names = [p.name.split(".ko")[0] for p in k.boot_modules()]
    assert names[:3] == ["failover", "net_failover", "virtio_net"]


def test_a_missing_required_option_is_named_in_one_line(paths: Paths) -> None:
    cfg = dict(default_kernel(paths).config)
    del cfg["DEVICE_PRIVATE"]
    with pytest.raises(HmmgpuError) as e:
        kconfig.check(cfg, Path("/x/.config"))
    msg = str(e.value)
    assert "CONFIG_DEVICE_PRIVATE" in msg and "hmmgpu kconfig" in msg and "\n" not in msg


def test_the_share_needs_virtiofs_only_when_asked_for(paths: Paths) -> None:
    cfg = dict(default_kernel(paths).config)
    cfg.pop("VIRTIO_FS")
    kconfig.check(cfg, Path("c"))
    with pytest.raises(HmmgpuError, match="CONFIG_VIRTIO_FS"):
        kconfig.check(cfg, Path("c"), share=True)


def test_the_fragment_sets_every_lab_option_and_the_debug_profile() -> None:
    plain = kconfig.parse_config(kconfig.fragment())
    debug = kconfig.parse_config(kconfig.fragment(debug=True))
    assert kconfig.missing(plain, kconfig.LAB, required_only=False) == []
    assert kconfig.missing(debug, kconfig.DEBUG, required_only=False) == []
    for name in ("KASAN", "PROVE_LOCKING", "DEBUG_VM", "DEBUG_PAGEALLOC", "DEBUG_OBJECTS"):
        assert debug[name] == "y" and name not in plain
    assert plain["TEST_HMM"] == "m" and plain["GUP_TEST"] == "y"


def test_kconfig_cli_prints_the_fragment_and_checks_a_config(tmp_path: Path) -> None:
    r = hmmgpu("kconfig", "--debug")
    assert r.returncode == 0 and "CONFIG_KASAN=y" in r.stdout
    bad = tmp_path / ".config"
    bad.write_text("".join(line + "\n" for line in kconfig.fragment().splitlines()
                           if line != "CONFIG_DEVICE_PRIVATE=y"))
    assert "CONFIG_DEVICE_PRIVATE is not y" in one_line(hmmgpu("kconfig", "--check",
                                                               str(tmp_path)))


def test_our_module_carries_the_default_kernels_vermagic(paths: Paths) -> None:
    k = default_kernel(paths)
    assert check_module_for(k, paths.artifacts / "hmmgpu.ko") == "hmmgpu"
    virtio = k.find_module("virtio_net")
    assert virtio.name.endswith(".ko.xz")
    assert modinfo(read_module(virtio), virtio)["name"] == "virtio_net"


def test_a_module_built_for_another_kernel_is_refused(paths: Paths) -> None:
    k = default_kernel(paths)
    k.release = "6.1.0-other"
    with pytest.raises(HmmgpuError, match="built for 7.*vermagic.*6.1.0-other"):
        check_module_for(k, paths.artifacts / "hmmgpu.ko")
    with pytest.raises(HmmgpuError, match="not a 64-bit ELF"):
        check_module_for(k, paths.artifacts.parent / "versions.json")


def fake_tree(root: Path, built: bool = False, config: bool = True) -> Path:
    root.mkdir()
    (root / "Makefile").write_text("")
    (root / "Kconfig").write_text("")
    if config:
        (root / ".config").write_text("CONFIG_MODULES=y\n")
    if built:
        (root / "arch/x86/boot").mkdir(parents=True)
        (root / "include/config").mkdir(parents=True)
        (root / "include/config/kernel.release").write_text("7.3.0-mine\n")
    return root


@pytest.mark.parametrize("case, expect", [
    ("nothing", "no such file or directory"),
    ("plain-dir", "not a kernel tree"),
    ("no-config", "no .config"),
    ("not-built", "not built yet"),
    ("text-file", "not a bzImage"),
    ("bzimage-alone", "needs --modules"),
    ("modules-alone", "--modules goes with --kernel"),
    ("missing-modules", "no such directory"),
])
def test_bad_kernel_arguments_are_one_line_each(paths: Paths, tmp_path: Path, case: str,
                                                expect: str) -> None:
    image = str(default_kernel(paths).image)
    args = {
        "nothing": lambda: ["--kernel", str(tmp_path / "none")],
        "plain-dir": lambda: ["--kernel", str(tmp_path)],
        "no-config": lambda: ["--kernel", str(fake_tree(tmp_path / "t", config=False))],
        "not-built": lambda: ["--kernel", str(fake_tree(tmp_path / "t"))],
        "text-file": lambda: ["--kernel", str(paths.versions)],
        "bzimage-alone": lambda: ["--kernel", image],
        "modules-alone": lambda: ["--modules", str(tmp_path)],
        "missing-modules": lambda: ["--kernel", image, "--modules", str(tmp_path / "none")],
    }[case]()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = one_line(hmmgpu("boot", *args, "true"))
    assert expect in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written there


def test_a_built_tree_without_module_symvers_is_refused(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "t", built=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"")
    with pytest.raises(HmmgpuError, match="no Module.symvers"):
        resolve_kernel(Paths(tmp_path), str(tree), None)


def test_missing_module_and_share_are_one_line(tmp_path: Path) -> None:
    assert "--module" in one_line(hmmgpu("boot", "--module", str(tmp_path / "x.ko"), "true"))
    assert "--share" in one_line(hmmgpu("boot", "--share", str(tmp_path / "none"), "true"))
    assert "--timeout" in one_line(hmmgpu("boot", "--timeout", "0", "true"))


def test_a_bzimage_with_its_modules_directory_resolves(paths: Paths, tmp_path: Path) -> None:
    k = default_kernel(paths)
    got = resolve_kernel(paths, str(k.image), str(k.modules))
    assert got.release == k.release and not got.default
    assert got.build and (got.build / "Module.symvers").exists()
    # a modules directory of some other release is refused
    other = tmp_path / "6.1.0-x"
    shutil.copytree(k.modules, other, symlinks=True,
                    ignore=shutil.ignore_patterns("kernel", "modules.*", "vmlinuz"))
    with pytest.raises(HmmgpuError, match="not the modules directory"):
        resolve_kernel(paths, str(k.image), str(other))


def test_junit_counts_failures_skips_and_the_cases_that_never_ran() -> None:
    tap = "1..4\nok 1 a.b\nnot ok 2 a.c\nok 3 a.d # SKIP no device\n"
    root = ET.fromstring(to_junit(parse(tap), "hmm-tests.x", 1.5, "guest kernel: Oops"))
    suite = root.find("testsuite")
    assert suite.get("failures") == "2"  # a.c and the guest kernel
    assert suite.get("skipped") == "1" and suite.get("errors") == "1"
    names = [tc.get("name") for tc in suite.iter("testcase")]
    assert names == ["a.b", "a.c", "a.d", "incomplete", "guest-kernel"]
    assert suite.get("tests") == "5"
