"""hmmgpu.lock and the choice between a pin and its fallback (host/pins.py).
The real archive path is covered by the fresh-machine test and every setup."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmgpu.host.errors import SetupError
from hmmgpu.host.pins import (
    Lock,
    Versions,
    _debver,
    archive_packages,
    archive_sources,
    choose_packages,
    dump_lock,
    installed_name,
    load_lock,
    source_order,
)

LOCK = load_lock()


def served_all(lock: Lock) -> dict[tuple[str, str], str]:
    return {(p.name, p.version): p.sha256 for p in lock.packages}


def test_the_committed_lock_pins_every_input_with_a_sha256() -> None:
    names = {p.name for p in LOCK.packages}
    assert {"qemu-system-x86", "seabios"} <= names
    assert any(n.startswith("linux-image-") for n in names)
    assert any(n.startswith("linux-headers-") for n in names)
    assert any(n.startswith("linux-source-") for n in names)
    for p in LOCK.packages:
        assert len(p.sha256) == 64 and p.version
    qemu = LOCK.source("qemu")
    assert len(qemu.files) == 3 and all(len(h) == 64 for h in qemu.files.values())
    assert len(LOCK.libvfio_user_tree) == 64


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "hmmgpu.lock"
    f.write_text(dump_lock(LOCK))
    assert load_lock(f) == LOCK


def test_a_malformed_lock_is_one_plain_error(tmp_path: Path) -> None:
    f = tmp_path / "hmmgpu.lock"
    f.write_text("[[package]]\nname = \n")
    with pytest.raises(SetupError, match="malformed"):
        load_lock(f)


def test_all_pins_served_installs_exact_versions() -> None:
    choices = choose_packages(LOCK, served_all(LOCK), "locked")
    assert all(c.status == "pinned" for c in choices)
    assert {c.spec for c in choices} == {f"{p.name}={p.version}" for p in LOCK.packages}


def test_a_dropped_kernel_pin_moves_the_whole_kernel_group_to_its_fallback() -> None:
    served = served_all(LOCK)
    image = LOCK.package("linux-image-")
    del served[(image.name, image.version)]
    choices = {c.name: c for c in choose_packages(LOCK, served, "locked")}
    for p in LOCK.packages:
        c = choices[p.name]
        if p.group == "kernel":  # image and headers must never mix versions
            assert c.status == "fallback" and c.spec == p.fallback
            assert image.name in c.reason
        else:
            assert c.status == "pinned"


def test_strict_stops_with_the_override_command() -> None:
    served = served_all(LOCK)
    del served[("seabios", LOCK.package("seabios").version)]
    with pytest.raises(SetupError, match="--pins locked"):
        choose_packages(LOCK, served, "strict")


def test_a_pin_whose_sha256_changed_is_refused_in_every_mode() -> None:
    served = served_all(LOCK)
    served[("seabios", LOCK.package("seabios").version)] = "0" * 64
    for mode in ("locked", "strict"):
        with pytest.raises(SetupError, match="refusing"):
            choose_packages(LOCK, served, mode)


def test_latest_ignores_the_pins() -> None:
    choices = choose_packages(LOCK, served_all(LOCK), "latest")
    assert all(c.status == "latest" for c in choices)
    with pytest.raises(SetupError, match="unknown pin mode"):
        choose_packages(LOCK, served_all(LOCK), "newest")


def test_kernel_names_follow_a_new_abi() -> None:
    image = LOCK.package("linux-image-").name
    abi = image.removeprefix("linux-image-")
    new = abi.replace(abi.split("+")[0], "9.9.9")
    assert installed_name(LOCK, image, new) == f"linux-image-{new}"
    assert installed_name(LOCK, "seabios", new) == "seabios"


SHOWSRC = """Package: qemu
Version: 1:10.2.2+ds-1
Checksums-Sha256:
 {a} 10 qemu_10.2.2+ds-1.dsc
 {b} 20 qemu_10.2.2+ds.orig.tar.xz

Package: qemu
Version: 1:11.1.3+ds-1
Checksums-Sha256:
 {c} 10 qemu_11.1.3+ds-1.dsc

Package: qemu
Version: 1:11.1.2+ds-3
Checksums-Sha256:
 {c} 10 qemu_11.1.2+ds-3.dsc
""".format(a="a" * 64, b="b" * 64, c="c" * 64)


def test_showsrc_parses_into_versions_and_file_hashes() -> None:
    served = archive_sources(SHOWSRC)
    assert served[("qemu", "1:10.2.2+ds-1")] == {"qemu_10.2.2+ds-1.dsc": "a" * 64,
                                                 "qemu_10.2.2+ds.orig.tar.xz": "b" * 64}
    assert len(served) == 3


def test_source_order_tries_the_pin_then_newest_first() -> None:
    served = archive_sources(SHOWSRC)
    pin = dataclasses.replace(LOCK.source("qemu"), version="1:10.2.2+ds-1",
                              files=served[("qemu", "1:10.2.2+ds-1")])
    assert source_order(pin, served, "locked") == [
        ("1:10.2.2+ds-1", "pinned"), ("1:11.1.3+ds-1", "fallback"), ("1:11.1.2+ds-3", "fallback")]
    assert source_order(pin, served, "strict") == [("1:10.2.2+ds-1", "pinned")]
    assert source_order(pin, served, "latest")[0] == ("1:11.1.3+ds-1", "latest")
    tampered = dataclasses.replace(pin, files={"qemu_10.2.2+ds-1.dsc": "d" * 64})
    with pytest.raises(SetupError, match="refusing"):
        source_order(tampered, served, "locked")


def test_packages_parse_from_apt_cache_show() -> None:
    text = "Package: seabios\nVersion: 1.17.0-1~bpo13+1\nSHA256: " + "e" * 64 + "\n" \
           "Description: x\n more\n\nPackage: seabios\nVersion: 1.16.3-2\nSHA256: f\n"
    assert archive_packages(text) == {("seabios", "1.17.0-1~bpo13+1"): "e" * 64,
                                      ("seabios", "1.16.3-2"): "f"}


@pytest.mark.parametrize("older,newer", [
    ("1.17.0-1~bpo13+1", "1.17.0-1"), ("1:10.2.2+ds-1", "1:11.1.2+ds-3"),
    ("7.3.4-1", "7.3.10-1"), ("1:9.0", "2:1.0"), ("4.12.1", "4.17~bpo13+1"),
])
def test_debian_version_order(older: str, newer: str) -> None:
    assert _debver(older) < _debver(newer)


def test_versions_report_a_silent_change_as_fallback(tmp_path: Path) -> None:
    v = Versions(tmp_path / "versions.json")
    v.record("seabios", "1.17.0-1~bpo13+1", "1.17.0-2", "pinned")
    v.record("linux-base", "4.17~bpo13+1", "4.17~bpo13+1", "pinned")
    v.save()
    again = Versions(tmp_path / "versions.json")
    assert again.drifted() == ["seabios"]
    table = again.table(LOCK)
    assert "1.17.0-2" in table and "not installed" in table


_part = st.text(alphabet="0123456789abz.+~", min_size=1, max_size=6).filter(
    lambda s: s[0].isdigit())


@settings(max_examples=150, deadline=None)
@given(a=_part, b=_part, ra=_part, rb=_part, ea=st.integers(0, 1), eb=st.integers(0, 1))
def test_version_order_agrees_with_dpkg(a: str, b: str, ra: str, rb: str, ea: int,
                                        eb: int) -> None:
    va, vb = f"{ea}:{a}-{ra}", f"{eb}:{b}-{rb}"
    lt = subprocess.run(["dpkg", "--compare-versions", va, "lt", vb]).returncode == 0
    eq = subprocess.run(["dpkg", "--compare-versions", va, "eq", vb]).returncode == 0
    assert (_debver(va) < _debver(vb)) == lt
    assert (_debver(va) == _debver(vb)) == eq
