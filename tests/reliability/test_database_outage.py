"""The database unavailable for a moment: requests get a clear 503, workers wait and retry, and
nothing is half-written.

In process (SQLite and PostgreSQL): an outage is simulated by a query wrapper that raises the
error a lost connection raises. With PostgreSQL, real processes (a gunicorn web server and a
Celery worker) reach the database through a TCP proxy that the test cuts and restores.

Reproduce: ``.venv/bin/python -m pytest tests/reliability/test_database_outage.py -q`` (with
``DATABASE_URL=postgres://...`` for the proxy test).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from celery.exceptions import Retry
from django.db import OperationalError, connection
from django.test import Client
from rest_framework.authtoken.models import Token

from classifier.models import ModelVersion
from reliability import _procs
from tests.factories import DatasetFactory, UserFactory
from tests.reliability.conftest import logs_of
from tests.training.conftest import TINY_COUNTS, smoke, wait_until
from training import services
from training.models import TERMINAL_STATUSES, TrainingJob
from training.tasks import run_training_job

Status = TrainingJob.Status
# Enough training images that an epoch takes about a second: time to cut the database mid-run.
LONGER_COUNTS = {"train": [48, 48, 48], "val": [4, 4, 4], "test": [4, 4, 4]}


class Outage:
    """A query wrapper that fails queries as a lost database connection does, while ``down``.

    ``only`` limits the failures to statements containing that text; ``times`` to a number.
    """

    def __init__(self):
        self.down = False
        self.only = ""
        self.times: int | None = None
        self.failed = 0

    def __call__(self, execute, sql, params, many, context):
        if self.down and self.only in sql and (self.times is None or self.times > 0):
            self.failed += 1
            if self.times is not None:
                self.times -= 1
            raise OperationalError("server closed the connection unexpectedly (simulated)")
        return execute(sql, params, many, context)


def model_files(settings) -> list[Path]:
    return sorted((Path(settings.MEDIA_ROOT) / "models").glob("*"))


# --- requests ------------------------------------------------------------------------------------


def test_requests_get_a_503_with_a_reason_while_the_database_is_down(transactional_db):
    user = UserFactory(username="nora")
    api, page = Client(), Client()
    token = Token.objects.create(user=user).key
    page.force_login(user)
    outage = Outage()
    jobs_before = TrainingJob.objects.count()

    with connection.execute_wrapper(outage):
        outage.down = True
        answer = api.get("/api/v1/training-jobs/", HTTP_AUTHORIZATION=f"Token {token}")
        created = api.post("/api/v1/training-jobs/", {"dataset": 1, "preset": "smoke"},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
        html = page.get("/jobs/")
        outage.down = False
        after = api.get("/api/v1/training-jobs/", HTTP_AUTHORIZATION=f"Token {token}")

    assert answer.status_code == 503
    assert answer["Content-Type"] == "application/json"
    assert answer["Retry-After"].isdigit()
    assert "database is temporarily unavailable" in answer.json()["detail"]
    assert created.status_code == 503
    assert html.status_code == 503
    assert html["Content-Type"].startswith("text/html")
    assert html["Retry-After"].isdigit()
    assert b"temporarily unavailable" in html.content
    assert "Content-Security-Policy" in html  # still passes through the other middleware
    assert outage.failed >= 3
    assert after.status_code == 200
    assert TrainingJob.objects.count() == jobs_before


def test_other_errors_are_not_disguised_as_an_outage(transactional_db, monkeypatch):
    user = UserFactory(username="olav")
    client = Client(raise_request_exception=False)
    client.force_login(user)

    def broken(**kwargs):
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr("training.selectors.training_jobs_visible_to", broken)
    assert client.get("/api/v1/training-jobs/").status_code == 500


# --- workers, in process -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_rides_out_an_outage_mid_training_and_at_registration(transactional_db, settings):
    owner = UserFactory(username="petra")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, preset="smoke",
                                     config=services.validate_training_config(
                                         preset="smoke", config=smoke(epochs=4)), total_epochs=4)
    outage = Outage()

    def follow(epoch, metrics):
        if epoch == 1:
            outage.down = True  # epochs 2 and 3 run with the database unreachable
        elif epoch == 3:
            # Back for epoch 4; then the registration's first commit attempt fails half-way,
            # after the model row and artifact were written: all of it must be undone.
            outage.only, outage.times = 'UPDATE "training_trainingjob" SET "status"', 1

    with connection.execute_wrapper(outage):
        outcome = services.training_job_run(job_id=job.pk, on_epoch=follow)

    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    assert outage.failed >= 3 and outage.times == 0  # the registration did meet the outage
    assert job.status == Status.SUCCEEDED
    assert job.deliveries == 1
    assert [entry["epoch"] for entry in job.history] == [1, 2, 3, 4]
    assert ModelVersion.objects.count() == 1 and job.model_version is not None
    assert [path.name for path in model_files(settings)] == [Path(job.model_version.artifact.name).name]
    logged = "\n".join(job.log)
    assert "epoch 1/4" in logged and "epoch 4/4" in logged
    assert "epoch 2/4" not in logged  # could not be written, and was not written later


def test_the_task_retries_when_the_claim_meets_an_outage(transactional_db, monkeypatch):
    """The task asks Celery for a retry (with backoff) instead of failing the job; a real
    worker going through that retry is in ``test_processes_ride_out_a_cut_database``."""
    owner = UserFactory(username="quinn")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, preset="smoke",
                                     config={"epochs": 1}, total_epochs=1)

    def claim_during_outage(*, job_id):
        raise OperationalError("could not connect to server (simulated)")

    monkeypatch.setattr(services, "training_job_claim", claim_during_outage)
    with pytest.raises(Retry):
        run_training_job.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == Status.QUEUED and not job.error  # not failed by the outage
    assert run_training_job.retry_backoff and run_training_job.max_retries >= 10


# --- real processes through a TCP proxy (PostgreSQL) ---------------------------------------------


def http(url: str, *, method: str = "GET", headers: dict | None = None, body: dict | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=json.dumps(body).encode() if body else None)
    if body:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.slow
def test_processes_ride_out_a_cut_database(database_proxy, platform_env, worker_processes,
                                           tmp_path, settings):
    owner = UserFactory(username="ruth")
    dataset = DatasetFactory(owner=owner, class_counts=LONGER_COUNTS)
    token = Token.objects.create(user=owner).key
    browser = Client()
    browser.force_login(owner)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    db = connection.settings_dict
    proxied = (f"postgres://{db['USER']}{':' + db['PASSWORD'] if db['PASSWORD'] else ''}"
               f"@127.0.0.1:{database_proxy.port}/{db['NAME']}")
    env = platform_env(database=proxied)
    web, base = _procs.start_web_server(tmp_path / "web", env=env)
    worker = worker_processes(env=env, heartbeat_timeout=30)
    api = {"Authorization": f"Token {token}"}
    try:
        assert http(f"{base}/api/v1/training-jobs/", headers=api)[0] == 200

        # 1. Cut: the web server answers 503 with a reason; a job sent meanwhile waits.
        database_proxy.cut()
        status, headers, content = http(f"{base}/api/v1/training-jobs/", headers=api)
        assert status == 503, content[:500]
        assert headers["Retry-After"].isdigit()
        assert "temporarily unavailable" in json.loads(content)["detail"]
        status, _, content = http(f"{base}/api/v1/training-jobs/", method="POST", headers=api,
                                  body={"dataset": dataset.pk, "preset": "smoke"})
        assert status == 503, content[:500]
        status, headers, content = http(f"{base}/jobs/", headers={"Cookie": cookie})
        assert status == 503 and headers["Content-Type"].startswith("text/html")
        assert b"temporarily unavailable" in content
        assert http(f"{base}/healthz")[0] == 503
        job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                              config=smoke(epochs=6))  # written directly
        wait_until(lambda: "Retry in" in worker.log(), timeout=60,
                   describe=lambda: logs_of(worker))
        job.refresh_from_db()
        assert job.status == Status.QUEUED and not job.error

        # 2. Restore: the task's retry claims the job, and training starts.
        database_proxy.restore()
        wait_until(lambda: TrainingJob.objects.get(pk=job.pk).current_epoch >= 1, timeout=120,
                   describe=lambda: logs_of(worker, web))
        assert http(f"{base}/api/v1/training-jobs/", headers=api)[0] == 200

        # 3. Cut again mid-training, for a few seconds: training goes on, then reports again.
        database_proxy.cut()
        time.sleep(4)
        database_proxy.restore()
        wait_until(lambda: TrainingJob.objects.get(pk=job.pk).status in TERMINAL_STATUSES,
                   timeout=180, describe=lambda: logs_of(worker))
    finally:
        database_proxy.restore()
        with contextlib.suppress(Exception):
            web.kill()

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, (job.error, logs_of(worker))
    assert job.deliveries == 1  # one claim: the outage caused no takeover and no second run
    assert [entry["epoch"] for entry in job.history] == list(range(1, 7))
    assert "database unavailable" in worker.log()
    assert TrainingJob.objects.count() == 1  # the POST answered 503 wrote nothing
    assert ModelVersion.objects.count() == 1
    assert len(model_files(settings)) == 1
    assert database_proxy.refused > 0
