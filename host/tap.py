"""Parsing the TAP that kselftest's harness (hmm-tests) prints."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

RESULT = re.compile(r"^(not )?ok (\d+) (\S+)(?:\s+#\s*(SKIP|XFAIL|TODO)\b\s*(.*))?$")
PLAN = re.compile(r"^1\.\.(\d+)$")


@dataclass
class Case:
    number: int
    name: str
    status: str  # pass | fail | skip | xfail
    reason: str = ""


@dataclass
class TapReport:
    planned: int = 0
    cases: list[Case] = field(default_factory=list)

    def count(self) -> Counter[str]:
        return Counter(c.status for c in self.cases)

    @property
    def failed(self) -> list[Case]:
        return [c for c in self.cases if c.status == "fail"]

    @property
    def complete(self) -> bool:
        return self.planned > 0 and len(self.cases) == self.planned

    def to_dict(self) -> dict[str, object]:
        return {"planned": self.planned, "totals": dict(self.count()),
                "cases": [asdict(c) for c in self.cases]}


def parse(text: str) -> TapReport:
    report = TapReport()
    for raw in text.splitlines():
        line = raw.strip()
        if m := PLAN.match(line):
            report.planned = int(m.group(1))
            continue
        m = RESULT.match(line)
        if not m:
            continue
        negated, num, name, directive, reason = m.groups()
        if directive == "SKIP":
            status = "skip"
        elif directive == "XFAIL":
            status = "xfail"
        else:
            status = "fail" if negated else "pass"
        report.cases.append(Case(int(num), name, status, (reason or "").strip()))
    return report
