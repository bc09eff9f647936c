"""The one-command launcher: brings every component up, and Ctrl-C takes every one down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return json.load(response)
    except OSError:
        return None


def test_the_launcher_serves_the_site_and_ctrl_c_leaves_no_process_behind(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(MEDPLATFORM_VAR_DIR=str(tmp_path / "var"), PORT=str(port),
               MEDMNIST_DIR=str(tmp_path / "no-data"), MEDMNIST_DOWNLOAD_TIMEOUT="2",
               WEB_WORKERS="1", WORKER_CONCURRENCY="1")
    launcher = subprocess.Popen([sys.executable, "-m", "medplatform.launcher"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        health = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and launcher.poll() is None:
            health = _healthz(port)
            if health and health["checks"]["workers"]["ok"]:
                break
            time.sleep(1)
        assert health is not None, "the site never answered"
        assert health["status"] == "ok"
        assert health["checks"]["workers"]["ok"], health
        started = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "redis-server" in names and "celery" in names and "gunicorn" in names
    finally:
        launcher.send_signal(signal.SIGINT)
        output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output
    assert "Created admin account" in output
    assert "not imported" in output  # offline with no data folder: said plainly, still started
    assert "Stopped." in output
    time.sleep(0.5)
    leftovers = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [p.cmdline() for p in leftovers]
    assert _healthz(port) is None
