"""Run the whole platform on one machine: ``python -m medplatform.launcher`` (``make run``).

Migrates, creates the first admin, starts the embedded Redis server when no ``REDIS_URL`` is set,
imports the MedMNIST datasets it can find, then runs a Celery worker (with the beat scheduler) and
the web server. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

from medplatform.env import BASE_DIR, embedded_redis_socket, uses_embedded_redis, var_dir

PYTHON = sys.executable


def _manage(*args: str, check: bool = True) -> int:
    result = subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR)
    if check and result.returncode != 0:
        raise SystemExit(f"'manage.py {' '.join(args)}' failed with exit code {result.returncode}")
    return result.returncode


def _spawn(name: str, command: list[str]) -> subprocess.Popen:
    print(f"  starting {name}: {' '.join(command)}", flush=True)
    # A session of its own per child, so shutdown can signal the child and everything it forked.
    return subprocess.Popen(command, cwd=BASE_DIR, start_new_session=True)


def _stop(processes: dict[str, subprocess.Popen], grace: float = 10.0) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, proc in processes.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop in {grace:.0f} s; killing it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (pool children)
        proc.wait()


class LaunchError(Exception):
    """Something the platform needs is missing or taken; the message says what to do."""


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise LaunchError(f"PORT must be a port number from 1 to 65535, got '{text}'")
    return int(text)


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start when the web server could not listen, before anything else is started.

    Binds as gunicorn does (``SO_REUSEADDR``), so a port that only has closing connections of an
    earlier run passes.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LaunchError(f"HOST '{host}' is not an address of this machine: {exc.strerror}") \
            from exc
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise LaunchError(
                f"cannot listen on {host}:{port}: {exc.strerror} (is MedPlatform or another "
                f"server already running there?). Stop it, or start with another port: "
                f"PORT={port + 1 if port < 65535 else 8000} make run"
            ) from exc


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _use_wal_journal() -> None:
    """With SQLite, readers and the writer stop blocking each other (web, worker, launcher).

    The journal mode is a property of the database file, so it is set once, before the other
    processes start; it needs no open connections besides this one.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        with contextlib.closing(sqlite3.connect(database["NAME"])) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medplatform.settings")
    host = os.environ.get("HOST", "127.0.0.1")
    data = var_dir()
    try:
        port = _port(os.environ.get("PORT", "8000"))
        _check_port_free(host, port)
    except LaunchError as exc:
        print(f"MedPlatform not started: {exc}", file=sys.stderr, flush=True)
        return 1

    redis = None
    processes: dict[str, subprocess.Popen] = {}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    # Explicit handlers: a launcher started from a script may inherit an ignored SIGINT.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if uses_embedded_redis():
            from medplatform.embedded_redis import EmbeddedRedis

            try:
                redis = EmbeddedRedis(embedded_redis_socket(data)).start()
            except RuntimeError as exc:
                print(f"MedPlatform not started: {exc}. Set REDIS_URL to use another Redis "
                      "server.", file=sys.stderr, flush=True)
                return 1
            print(f"Embedded Redis running at {redis.socket_path}", flush=True)
        else:
            print("Using the Redis server at REDIS_URL", flush=True)
        _manage("migrate", "--noinput")
        _use_wal_journal()
        _manage("collectstatic", "--noinput", "-v", "0")
        _manage("ensure_admin")
        print("Importing MedMNIST datasets (MEDMNIST_DIR, else the official download)…", flush=True)
        _manage("import_medmnist", "--all", "--keep-going", check=False)
        processes["Celery worker"] = _spawn("Celery worker", [
            PYTHON, "-m", "celery", "-A", "medplatform", "worker", "--beat",
            "--queues", "default,training,inference", "--concurrency",
            os.environ.get("WORKER_CONCURRENCY", "2"), "--loglevel", "INFO",
            "--schedule", str(data / "celerybeat-schedule"), "--hostname", "embedded@%h",
        ])
        processes["web server"] = _spawn("web server", [
            PYTHON, "-m", "gunicorn", "medplatform.wsgi:application", "--bind", f"{host}:{port}",
            "--workers", os.environ.get("WEB_WORKERS", "2"), "--threads", "4",
            "--timeout", "300", "--access-logfile", "-",
            # Keep idle connections open longer than clients pause between requests: with the
            # 2 s default a busy worker can close one just as a request arrives on it (a reset).
            "--keep-alive", os.environ.get("WEB_KEEP_ALIVE", "65"),
        ])
        print(f"\nMedPlatform is running at http://{host}:{port}/  (Ctrl-C stops everything)\n",
              flush=True)
        while True:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"The {name} {_describe_exit(proc.returncode)}; stopping everything "
                          "(its messages are above).", file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        _stop(processes)
        if redis:
            redis.stop()
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
