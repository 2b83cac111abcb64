"""Parsing the TAP that kselftest's harness (hmm-tests) prints."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
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


def to_junit(report: TapReport, suite: str, wall_s: float, kernel_failure: str = "",
             sanitizer: list[str] | None = None, device_deaths: list[str] | None = None) -> str:
    """The report as JUnit XML: one testcase per TAP case; a guest kernel
    failure, sanitizer report or device server death is a failed testcase of
    its own, and cases
    the run never reached are errors, so CI shows what did not run."""
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, time=f"{wall_s:.1f}")
    counts = Counter[str]()
    for c in report.cases:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=c.name)
        if c.status == "fail":
            ET.SubElement(tc, "failure", message=f"not ok {c.number} {c.name}")
            counts["failures"] += 1
        elif c.status in ("skip", "xfail"):
            ET.SubElement(tc, "skipped", message=c.reason or c.status)
            counts["skipped"] += 1
    missing = max(report.planned - len(report.cases), 0) if report.planned else 1
    if missing:
        tc = ET.SubElement(ts, "testcase", classname=suite, name="incomplete")
        ET.SubElement(tc, "error", message=f"{missing} planned case(s) did not run "
                      f"({len(report.cases)} of {report.planned or '?'} reported)")
        counts["errors"] += 1
    for name, text in (("guest-kernel", kernel_failure),
                       ("driver-sanitizer", "\n".join(sanitizer or [])),
                       ("device-server", "\n".join(device_deaths or []))):
        if text:
            tc = ET.SubElement(ts, "testcase", classname=suite, name=name)
            f = ET.SubElement(tc, "failure", message=text.splitlines()[0])
            f.text = text
            counts["failures"] += 1
    ts.set("tests", str(len(ts)))
    for k in ("failures", "errors", "skipped"):
        ts.set(k, str(counts[k]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
