"""A short load run: a few users for 20 seconds against gunicorn and a Celery worker lose no upload
and meet no server error (the full run is in docs/reliability/load.md).

Runs ``reliability.load`` as a subprocess on SQLite and its own embedded Redis (whatever
``DATABASE_URL`` and ``REDIS_URL`` say: the test must not write into a shared database), and reads
its results file. About a minute and a half on an idle two-core machine.

Reproduce: ``.venv/bin/python -m pytest tests/reliability/test_load_smoke.py -q``
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # generous: the machine may be busy; the run itself is 20 s

pytestmark = pytest.mark.slow


def test_a_short_mixed_load_loses_no_upload_and_meets_no_server_error(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MEDPLATFORM_VAR_DIR")}
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "reliability.load", "--users", "4", "--seconds", "20",
               "--training-interval", "8", "--inference-interval", "6", "--grace", "180",
               # With the documented weight of 1 in 25, a 20 s run's 40-60 task picks missed
               # every training launch about one run in ten.
               "--launch-weight", "8",
               "--skip-collectstatic", "--out", str(out), "--var-dir", str(tmp_path / "var")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # it stops the servers it started, then exits
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the load run took more than {TIMEOUT_S} s:\n{output[-6000:]}")
    assert out.exists(), f"no results (exit code {process.returncode}):\n{output[-6000:]}"
    result = json.loads(out.read_text())
    uploads, errors, jobs = result["uploads"], result["errors"], result["jobs"]

    assert uploads["accepted"]["prediction"] > 0, output[-4000:]
    assert uploads["lost"] == 0, uploads["lost_detail"]
    assert uploads["verified"] == uploads["accepted_total"]
    assert errors["server_errors"] == 0, errors["first"]
    assert errors["client_exceptions"] == 0, errors["locust_exceptions"]
    assert jobs["training"]["launched"] >= 1
    assert jobs["training"]["not_finished"] == jobs["inference"]["not_finished"] == 0, jobs
    requests = result["requests"]["aggregated"]["requests"]
    assert requests > 0 and result["requests"]["aggregated"]["p50_ms"] is not None
    assert errors["connection_errors"] == 0, errors["first"]
    failed = {name for name, ok in result["checks"].items() if not ok}
    assert not failed, failed
    assert process.returncode == 0, output[-4000:]
