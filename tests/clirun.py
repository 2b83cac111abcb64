"""Running the `hmmgpu` CLI as a user would, for tests."""

from __future__ import annotations

import os
import subprocess
import sys


def hmmgpu(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hmmgpu.host.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
