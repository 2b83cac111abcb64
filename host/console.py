"""Reading the guest's serial console log and spotting kernel failures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Lines the kernel prints when something went wrong. "WARNING:" covers WARN()
# ("WARNING: CPU: 0 PID: ..." and "WARNING: at ..."); hung tasks and RCU
# stalls are how a hang shows.
FAILURE = re.compile(
    r"(Oops[: ]|BUG: |kernel BUG at|WARNING: |Kernel panic|general protection fault"
    r"|Unable to handle kernel|UBSAN: |KASAN: |watchdog: BUG"
    r"|INFO: task .* blocked for more than|rcu: INFO: rcu_\w+ detected stalls)"
)
CONTEXT_AFTER = 30


@dataclass(frozen=True)
class KernelFailure:
    line: str
    excerpt: str


class Console:
    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, since: int = 0) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def failures(self, since: int = 0) -> list[KernelFailure]:
        return scan(self.text(since))

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-n:])


def scan(text: str) -> list[KernelFailure]:
    """The kernel failure reports in console text, one per splat."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        if FAILURE.search(lines[i]):
            excerpt = "\n".join(lines[max(0, i - 2): i + CONTEXT_AFTER])
            found.append(KernelFailure(lines[i].strip(), excerpt))
            i += CONTEXT_AFTER  # one report per splat
        else:
            i += 1
    return found
