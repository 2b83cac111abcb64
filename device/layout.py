"""Binary record layouts defined once, for Python and C.

A Layout lists a record's fields; from it come the struct.Struct and numpy
dtype the Python side packs and reads with, and the C struct the driver, the
guest tools and the TCG plugin compile, with static_asserts on its size and
every field's offset, so that a compiler catches a C struct that drifted from
the Python one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_STRUCT = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # u8, u16, u32, u64
    count: int = 1
    doc: str = ""

    @property
    def size(self) -> int:
        return _SIZES[self.kind] * self.count


@dataclass(frozen=True)
class Layout:
    """A little-endian record without padding: fields are laid out in order,
    each naturally aligned (the checks below refuse anything else)."""

    cname: str  # the C struct's tag
    fields: tuple[Field, ...]
    size: int
    doc: str

    def __post_init__(self) -> None:
        off = 0
        for f in self.fields:
            if off % _SIZES[f.kind]:
                raise ValueError(f"{self.cname}.{f.name} at {off} is not naturally aligned")
            off += f.size
        if off != self.size:
            raise ValueError(f"{self.cname}: fields take {off} bytes, not {self.size}")

    def offsets(self) -> dict[str, int]:
        out, off = {}, 0
        for f in self.fields:
            out[f.name] = off
            off += f.size
        return out

    def struct(self) -> struct.Struct:
        return struct.Struct("<" + "".join(f"{f.count if f.count > 1 else ''}{_STRUCT[f.kind]}"
                                           for f in self.fields))

    def dtype(self):
        import numpy as np
        def np_type(f: Field) -> str:
            return f"<u{_SIZES[f.kind]}"

        return np.dtype([(f.name, np_type(f), (f.count,)) if f.count > 1 else
                         (f.name, np_type(f)) for f in self.fields])

    def c_struct(self, endian_types: bool) -> list[str]:
        """The C struct and its asserts. endian_types: __le32 etc. (kernel
        and device ABI); else uint32_t etc. (a host-side file format)."""
        def ctype(kind: str) -> str:
            bits = kind[1:]
            if endian_types:
                return "__u8" if bits == "8" else f"__le{bits}"
            return f"uint{bits}_t"

        lines = [f"/* {self.doc} */", f"struct {self.cname} {{"]
        for f in self.fields:
            decl = f"\t{ctype(f.kind)} {f.name}{f'[{f.count}]' if f.count > 1 else ''};"
            lines.append(f"{decl:<24}/* {f.doc} */" if f.doc else decl)
        lines.append("};")
        what = f"struct {self.cname}"
        lines.append(f'static_assert(sizeof({what}) == {self.size}, "{self.cname} size");')
        for name, off in self.offsets().items():
            lines.append(f'static_assert(offsetof({what}, {name}) == {off}, '
                         f'"{name}");')
        return lines
