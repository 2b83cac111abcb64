"""SSH into the guest with fabric: a key made per lab, a forwarded loopback port."""

from __future__ import annotations

import io
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Config, Connection

from .errors import GuestCommandFailed, VmError

log = logging.getLogger("hmmgpu")


def make_key(path: Path) -> str:
    """Write a new ed25519 private key to `path`; return the public key line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    return pub.decode() + " hmmgpu-lab\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    command: str
    stdout: str
    stderr: str
    exit_code: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Guest:
    """Commands in the guest over SSH."""

    def __init__(self, port: int, key_file: Path, verbose: bool = False) -> None:
        self.port = port
        self.verbose = verbose
        self.pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(key_file.read_text()))
        self.conn: Connection | None = None

    def _connection(self) -> Connection:
        if self.conn is None or not self.conn.is_connected:
            cfg = Config(overrides={"load_ssh_configs": False})
            self.conn = Connection("127.0.0.1", user="root", port=self.port, config=cfg,
                                   connect_timeout=10,
                                   connect_kwargs={"pkey": self.pkey, "look_for_keys": False,
                                                   "allow_agent": False,
                                                   "banner_timeout": 30})
            self.conn.open()
        return self.conn

    def wait(self, timeout: float, alive=lambda: True) -> float:
        """Retry until SSH answers; returns seconds waited."""
        t0 = time.monotonic()
        # While the guest boots, QEMU's port forward accepts and resets
        # connections; paramiko logs each as an error with a traceback, from
        # its transport thread, also after we stopped waiting: keep it quiet
        # (failures that matter reach us as exceptions).
        logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
        return self._wait(t0, timeout, alive)

    def _wait(self, t0: float, timeout: float, alive) -> float:
        last: Exception | None = None
        while time.monotonic() - t0 < timeout:
            if not alive():
                raise VmError("QEMU exited before the guest answered on SSH")
            try:
                self._connection()
                return time.monotonic() - t0
            except Exception as e:  # noqa: BLE001 - paramiko raises many kinds while booting
                last = e
                self.conn = None
                time.sleep(0.2)
        raise VmError(f"guest did not answer on SSH port {self.port} within {timeout:.0f} s "
                      f"({last})")

    def run(self, command: str, check: bool = True, timeout: float | None = 600) -> Result:
        if self.verbose:
            print(f"[guest] $ {command}", flush=True)
        t0 = time.monotonic()
        r = self._connection().run(command, hide=True, warn=True, timeout=timeout,
                                   in_stream=False)
        res = Result(command, r.stdout, r.stderr, r.exited, time.monotonic() - t0)
        log.debug("guest: %s -> %d", command, r.exited)
        if check and not res.ok:
            raise GuestCommandFailed(command, res.exit_code, res.stdout, res.stderr)
        return res

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
