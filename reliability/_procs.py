"""Real processes for fault injection: a private Redis server, Celery workers, a web server, and
a TCP proxy that can cut the database off.

Everything listens on loopback only and belongs to the caller, which may kill it at will: the
shared services of the machine (its Redis, its PostgreSQL) are never touched. Used by
``reliability/kill_workers.py`` and the tests in ``tests/reliability/``.
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], *, timeout: float, interval: float = 0.2,
             what: str = "condition") -> object:
    """Poll ``condition`` until it returns something true; ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def _end_process_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived the leader
    process.wait()


# --- Redis ---------------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on a loopback port, without persistence.

    ``kill()`` loses every message it held (nothing is saved); ``start()`` again brings back an
    empty server on the same port, as a broker restarted without its data would be.
    """

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or str(Path(sys.executable).with_name("redis-server"))
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._answers, timeout=15, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server dies with whatever it held."""
        if self.process and self.process.poll() is None:
            _end_process_group(self.process)
        self.process = None

    stop = kill


# --- Database proxy ------------------------------------------------------------------------------


class TcpProxy:
    """Forwards a loopback port to ``target``; ``cut()`` makes the target unreachable.

    While cut, every open connection is closed and new ones are accepted and closed at once, as
    a database server that went away would do; ``restore()`` lets connections through again.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self.connections = 0
        self.refused = 0
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._cut
                if refuse:
                    self.refused += 1
            if refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select(timeout=1.0):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            self._drop(client, upstream)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._cut = True
            victims = list(self._open)
        self._drop(*victims)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


# --- Platform processes --------------------------------------------------------------------------


class PlatformProcess:
    """A platform process (worker or web server) in a session of its own, logging to a file."""

    def __init__(self, process: subprocess.Popen, log_path: Path, name: str):
        self.process = process
        self.log_path = log_path
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def owns(self, pid: int | None) -> bool:
        """Whether ``pid`` is this process or one it forked (a pool child)."""
        if not pid or not self.is_alive():
            return False
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and everything it forked; SIGKILL gives no chance to clean up."""
        _end_process_group(self.process, sig)


def platform_env(*, database_url: str, broker_url: str, var_dir: Path, work_dir: Path,
                 media_root: Path, **extra: str) -> dict[str, str]:
    """Environment for a platform process with production settings on the given services."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "medplatform.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": broker_url,
        "MEDPLATFORM_VAR_DIR": str(var_dir),
        "MEDPLATFORM_WORK_DIR": str(work_dir),
        "MEDIA_ROOT": str(media_root),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": "reliability-under-test",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MODEL_EVALUATION_BOOTSTRAP": "50",
        **extra,
    }


def start_worker(folder: Path, *, name: str, env: dict[str, str], heartbeat_timeout: float = 6,
                 sweep_interval: float = 1) -> PlatformProcess:
    """``celery worker --beat`` (one pool process) on the ``default, training, inference`` queues.

    ``env`` comes from :func:`platform_env`; its var folder is replaced by one of the worker's
    own under ``folder``, where its log and beat schedule go too. Workers started with the same
    ``MEDPLATFORM_WORK_DIR`` share checkpoints, so one resumes what another left.
    """
    folder.mkdir(parents=True, exist_ok=True)
    var = folder / f"{name}-var"
    var.mkdir(exist_ok=True)
    log_path = folder / f"{name}.log"
    worker_env = {**env, "MEDPLATFORM_VAR_DIR": str(var),
                  "JOB_HEARTBEAT_TIMEOUT": str(int(heartbeat_timeout)),
                  "JOB_SWEEP_INTERVAL": str(sweep_interval)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "medplatform", "worker", "--beat",
             "-Q", "default,training,inference", "--concurrency", "1", "--loglevel", "INFO",
             "--schedule", str(folder / f"{name}-beat"), "--hostname", f"{name}@%h"],
            cwd=BASE_DIR, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    return PlatformProcess(process, log_path, name)


def start_web_server(folder: Path, *, env: dict[str, str], port: int | None = None,
                     timeout: float = 60) -> tuple[PlatformProcess, str]:
    """A gunicorn web server (two threads) on a loopback port; returns it and its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = folder / "web.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "medplatform.wsgi:application",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2",
             "--timeout", "120"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = PlatformProcess(process, log_path, "web")

    def listening() -> bool:
        if not server.is_alive():
            raise RuntimeError(f"the web server exited:\n{server.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    wait_for(listening, timeout=timeout, what="the web server")
    return server, f"http://127.0.0.1:{port}"


# --- Data ----------------------------------------------------------------------------------------


def tiny_dataset_npz(class_counts: dict[str, list[int]], *, size: int = 28, seed: int = 0) -> bytes:
    """A MedMNIST-style ``.npz`` of random RGB images with the given per-split class counts."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, counts in class_counts.items():
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()
