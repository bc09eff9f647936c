"""The launcher (``make run``) refusing to start, plainly and at once, when it cannot run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from medplatform import launcher
from medplatform.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def _launch(var: Path, timeout: float = 90, **env_vars: str) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(MEDPLATFORM_VAR_DIR=str(var), MEDMNIST_DIR=str(var / "no-data"),
               MEDMNIST_DOWNLOAD_TIMEOUT="1", WEB_WORKERS="1", WORKER_CONCURRENCY="1", **env_vars)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "medplatform.launcher"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the launcher stops what it started
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"the launcher was still running after {timeout} s:\n{output}")
    return proc.returncode, output, time.monotonic() - started


@pytest.fixture
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_taken_port_stops_the_launch_before_anything_starts(tmp_path, taken_port):
    code, output, seconds = _launch(tmp_path / "var", PORT=str(taken_port))

    assert code == 1, output
    assert f"MedPlatform not started: cannot listen on 127.0.0.1:{taken_port}" in output
    assert f"PORT={taken_port + 1} make run" in output
    assert "Traceback" not in output
    assert "is running at" not in output
    assert not (tmp_path / "var" / "db.sqlite3").exists()  # nothing migrated or started
    assert seconds < 30


def test_a_port_that_is_not_a_number_is_refused(tmp_path):
    code, output, _ = _launch(tmp_path / "var", PORT="eighty")

    assert code == 1, output
    assert "PORT must be a port number from 1 to 65535, got 'eighty'" in output
    assert "Traceback" not in output


def test_an_embedded_redis_that_cannot_start_is_reported_without_a_traceback(tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    deep = tmp_path / ("v" * 120)  # too long a path for the Redis socket

    code, output, seconds = _launch(deep, PORT=str(port))

    assert code == 1, output
    assert "MedPlatform not started: Embedded Redis cannot listen on" in output
    assert "set MEDPLATFORM_VAR_DIR to a shorter folder" in output
    assert "Traceback" not in output
    assert "starting" not in output  # no worker or web server was started
    assert seconds < 30


def test_the_port_check_passes_a_free_port_and_names_a_bad_host():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher._check_port_free("127.0.0.1", port)  # nothing raised
    with pytest.raises(launcher.LaunchError, match=r"HOST 'no-such-host\.invalid'"):
        launcher._check_port_free("no-such-host.invalid", port)


def test_a_child_that_dies_is_described_by_its_exit_code_or_signal():
    assert launcher._describe_exit(1) == "exited with code 1"
    assert launcher._describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert launcher._describe_exit(-200) == "was killed by signal 200"


def test_a_socket_path_too_long_for_unix_sockets_fails_at_once_saying_what_to_do():
    folder = Path(tempfile.mkdtemp(prefix="mp-long-", dir="/tmp"))
    try:
        server = EmbeddedRedis(folder / ("x" * 100) / "redis.sock")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="set MEDPLATFORM_VAR_DIR to a shorter folder"):
            server.start(timeout=5)
        assert time.monotonic() - started < 1
        assert server.process is None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
