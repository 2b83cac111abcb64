"""The CLI answers mistakes with one plain line, never a traceback."""

from __future__ import annotations

import re

import pytest
from clirun import hmmgpu

from hmmgpu.host import provision
from hmmgpu.host.errors import SetupError
from hmmgpu.host.paths import Paths


@pytest.mark.parametrize("args", [["frobnicate"], ["boot", "--gpus", "two"],
                                  ["selftest", "--accel", "xen"], []])
def test_wrong_arguments_get_one_line_and_exit_2(args: list[str]) -> None:
    r = hmmgpu(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hmmgpu"), r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_cache_directory_is_one_line_not_a_traceback(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = hmmgpu("setup", env={"HMMGPU_CACHE": str(blocker / "cache")})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_full_disk_is_reported_with_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(provision.shutil, "disk_usage",
                        lambda _p: type("U", (), {"free": 100 << 20})())
    with pytest.raises(SetupError, match="HMMGPU_CACHE"):
        provision.Provisioner(Paths(tmp_path)).check_prerequisites()


def test_mirror_comes_from_the_hosts_apt_sources() -> None:
    mirror = provision.debian_mirror()
    assert mirror.startswith(("http://", "https://", "file:/"))
    assert "security" not in mirror


def test_hwdef_prints_the_c_header() -> None:
    r = hmmgpu("hwdef")
    assert r.returncode == 0 and "#define HMMGPU_REG_ID" in r.stdout


def test_print_versions_shows_every_pin_before_anything_is_installed(tmp_path) -> None:
    from hmmgpu.host.pins import load_lock
    r = hmmgpu("setup", "--print-versions", env={"HMMGPU_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    for p in load_lock().packages:
        assert f"{p.name} " in r.stdout and p.version in r.stdout
    assert r.stdout.count("not installed") == len(load_lock().packages) + 2


def test_print_versions_of_the_provisioned_cache_are_the_pins(paths: Paths) -> None:
    r = hmmgpu("setup", "--print-versions")
    assert r.returncode == 0, r.stderr
    rows = [re.split(r"\s{2,}", line) for line in r.stdout.splitlines()[2:]]
    assert len(rows) >= 12
    for name, _pinned, installed, status in rows:
        assert installed != "not installed", name
        assert status.split()[0] in ("pinned", "fallback", "latest"), (name, status)


def test_unknown_pin_mode_is_one_line() -> None:
    r = hmmgpu("setup", "--pins", "newest")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("flags", "separate"), [([], True), (["--no-cpu-placement"], False)])
def test_cpu_placement_is_on_unless_switched_off(flags: list[str], separate: bool) -> None:
    from hmmgpu.host.cli import build_parser, lab_config
    for command in ("boot", "selftest", "demo"):
        args = build_parser().parse_args([command, *flags])
        assert lab_config(args).separate_cpus is separate


@pytest.mark.parametrize(("flags", "poll"), [([], None), (["--server-poll-us", "0"], 0),
                                            (["--server-poll-us", "500"], 500)])
def test_server_poll_us_reaches_the_lab(flags: list[str], poll: int | None) -> None:
    from hmmgpu.host.cli import build_parser, lab_config
    for command in ("boot", "selftest", "demo"):
        args = build_parser().parse_args([command, *flags])
        assert lab_config(args).server_poll_us == poll


def test_a_negative_server_poll_is_one_line() -> None:
    r = hmmgpu("boot", "--server-poll-us", "-5")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--server-poll-us" in r.stderr, r.stderr
