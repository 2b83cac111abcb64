"""docs/hardware.md against device/hwdef.py: every table of the manual that
restates a number of the interface (registers, opcodes, error codes, PTE
bits, vectors, sanitizer checks) must say what hwdef defines, row for row."""

from __future__ import annotations

import re
from pathlib import Path

from hmmgpu.device import hwdef as hw

MANUAL = Path(__file__).resolve().parents[1] / "docs" / "hardware.md"


def tables() -> list[list[dict[str, str]]]:
    """Each markdown table of the manual as rows keyed by its header."""
    out, rows, header = [], None, None
    for line in MANUAL.read_text().splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells, strict=False)))
        elif header is not None:
            out.append(rows)
            header = rows = None
    return out


def table_with(*columns: str, without: str = "") -> list[dict[str, str]]:
    found = [t for t in tables() if t and all(c in t[0] for c in columns)
             and without not in t[0]]
    assert len(found) == 1, f"one table with columns {columns}, found {len(found)}"
    return found[0]


def name(cell: str) -> str:
    return cell.strip("`")


def number(cell: str) -> int:
    return int(cell.strip("`"), 0)


def test_global_register_table_is_hwdef() -> None:
    rows = table_with("offset", "name", "access", "reset", "meaning")
    got = {name(r["name"]): (number(r["offset"]), r["access"], r["reset"]) for r in rows}
    want = {r.reg.name: (int(r.reg), r.access, r.reset) for r in hw.REGISTERS}
    assert set(got) == set(want)
    for reg, (offset, access, reset) in got.items():
        w_offset, w_access, w_reset = want[reg]
        assert (offset, access) == (w_offset, w_access), reg
        if re.fullmatch(r"`?(0x[0-9A-Fa-f]+|\d+)`?", reset):
            assert number(reset) == w_reset, reg
        else:  # "—" (write-only, a clock) or "size" (the server's --vram)
            assert w_reset is None or reg.startswith("VRAM_SIZE") or w_access == "WO", reg


def test_queue_register_table_is_hwdef() -> None:
    rows = table_with("offset", "name", "access", "meaning", without="reset")
    assert {name(r["name"]): number(r["offset"]) for r in rows} == \
        {q.name: int(q) for q in hw.QReg}


def test_opcode_table_is_hwdef() -> None:
    rows = table_with("opcode", "name", "arguments", "effect")
    assert {name(r["name"]): number(r["opcode"]) for r in rows} == \
        {o.name: int(o) for o in hw.Opcode}


def test_error_code_table_is_hwdef() -> None:
    rows = table_with("code", "name", "cause")
    assert {name(r["name"]): number(r["code"]) for r in rows} == \
        {e.name: int(e) for e in hw.ErrorCode}


def test_pte_bit_table_is_hwdef() -> None:
    rows = table_with("bits", "name", "meaning")
    bits = {name(r["name"]): number(r["bits"]) for r in rows if r["bits"].isdigit()}
    assert bits == {p.name: p.bit_length() - 1 for p in hw.Pte}
    (addr,) = [r for r in rows if name(r["name"]) == "address"]
    hi, lo = (int(x) for x in addr["bits"].split(":"))
    assert ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) == hw.PTE_ADDR_MASK


def test_vector_table_is_hwdef() -> None:
    rows = table_with("vector", "name", "cause")
    assert {name(r["name"]): number(r["vector"]) for r in rows} == \
        {v.name: int(v) for v in hw.IrqVector}


def test_sanitizer_check_table_is_hwdef() -> None:
    rows = table_with("check", "fires when")
    assert [name(r["check"]) for r in rows] == [c.name for c in hw.SanCheck]


def test_flag_table_names_every_opcode() -> None:
    rows = table_with("opcode", "flag bits")
    named = {n for r in rows for n in re.findall(r"`(\w+)`", r["opcode"])}
    assert named == {o.name for o in hw.Opcode}
    assert rows[0]["opcode"] == "every opcode" and "`IRQ`" in rows[0]["flag bits"]


ARCHITECTURE = MANUAL.parent / "architecture.md"
DRIVER = MANUAL.parents[1] / "guest" / "driver"


def test_module_parameter_table_is_the_driver_source() -> None:
    """docs/architecture.md's table of hmmgpu.ko's module parameters: every
    module_param() of guest/driver, with its mode and its default."""
    source = "\n".join(p.read_text() for p in sorted(DRIVER.glob("*.c")))
    header = (DRIVER / "hmmgpu.h").read_text()
    params = {}
    for name, mode in re.findall(r"module_param\((\w+), \w+, (0\d+)\)", source):
        init = re.search(rf"static \w+(?: \w+)? {name} = ([^;]+);", source)
        value = init.group(1).strip() if init else "0"
        macro = re.search(rf"#define {value}\s+(\S+)", header)
        params[name] = (mode, macro.group(1) if macro else
                        {"true": "1", "false": "0"}.get(value, value))
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| (-?\d+) \| (0\d+) \|", line)
        if m:
            rows[m.group(1)] = (m.group(3), m.group(2))
    assert params and rows == params


def test_the_package_table_names_every_module() -> None:
    """docs/architecture.md's package layout names every module of device/
    and host/, so a reader finds each one's job there."""
    text = ARCHITECTURE.read_text()
    root = MANUAL.parents[1]
    modules = [p.relative_to(root).as_posix() for d in ("device", "host")
               for p in sorted((root / d).glob("*.py")) if p.name != "__init__.py"]
    assert modules and [m for m in modules if f"`{m}`" not in text] == []
