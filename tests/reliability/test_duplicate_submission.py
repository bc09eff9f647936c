"""The same create request sent several times at once (a double click, a client's retry), with
one ``Idempotency-Key``, against a live server: one job, one broker message, one run, one model.

On PostgreSQL (``DATABASE_URL`` set) the requests race in separate transactions and the unique
constraint on ``(owner, idempotency_key)`` settles them; on SQLite writes are serialized.

Reproduce: ``.venv/bin/python -m pytest tests/reliability/test_duplicate_submission.py -q``
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from rest_framework.authtoken.models import Token

from classifier.models import ModelVersion
from medplatform.celery import waiting_task_args
from tests.factories import DatasetFactory, UserFactory
from tests.reliability.conftest import logs_of
from tests.training.conftest import TINY_COUNTS, smoke, wait_until
from training.models import TERMINAL_STATUSES, InferenceJob, TrainingJob

pytestmark = pytest.mark.slow

Status = TrainingJob.Status
SENDERS = 4


def post_at_once(url: str, body: dict, headers: dict, senders: int = SENDERS) -> list[tuple]:
    """POST ``body`` from ``senders`` threads released together; ``[(status, json), ...]``."""
    barrier = threading.Barrier(senders)
    answers: list[tuple] = [None] * senders

    def send(index: int) -> None:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **headers})
        barrier.wait()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[index] = (response.status, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            answers[index] = (exc.code, exc.read().decode(errors="replace"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_duplicates_create_one_job_that_runs_once(live_server, private_broker,
                                                             worker_processes):
    owner = UserFactory(username="dora")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    headers = {"Authorization": f"Token {Token.objects.create(user=owner).key}"}
    url = f"{live_server.url}/api/v1/training-jobs/"
    body = {"dataset": dataset.pk, "preset": "smoke", "config": smoke(epochs=2)}

    answers = post_at_once(url, body, {**headers, "Idempotency-Key": "launch-1"})
    assert all(status in (200, 201) for status, _ in answers), answers
    assert sorted(status for status, _ in answers) == [200] * (SENDERS - 1) + [201]
    assert len({answer["id"] for _, answer in answers}) == 1
    job = TrainingJob.objects.get()
    assert job.idempotency_key == "launch-1"
    assert [args[0] for args in waiting_task_args("training.tasks.run_training_job")] == [job.pk]

    # A different key is a different job.
    status, other = post_at_once(url, body, {**headers, "Idempotency-Key": "launch-2"}, senders=1)[0]
    assert status == 201 and other["id"] != job.pk

    worker = worker_processes(heartbeat_timeout=30)
    wait_until(lambda: all(row.status in TERMINAL_STATUSES for row in TrainingJob.objects.all()),
               timeout=180, interval=0.5, describe=lambda: logs_of(worker))
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, (job.error, logs_of(worker))
    assert job.deliveries == 1
    assert ModelVersion.objects.filter(training_job=job).count() == 1
    assert ModelVersion.objects.count() == TrainingJob.objects.count() == 2

    # Batch inference jobs take the same header.
    url = f"{live_server.url}/api/v1/inference-jobs/"
    body = {"model": job.model_version_id, "split": "test"}
    answers = post_at_once(url, body, {**headers, "Idempotency-Key": "batch-1"})
    assert sorted(status for status, _ in answers) == [200] * (SENDERS - 1) + [201], answers
    batch = InferenceJob.objects.get()
    assert {answer["id"] for _, answer in answers} == {batch.pk}
    wait_until(lambda: InferenceJob.objects.get(pk=batch.pk).status in TERMINAL_STATUSES,
               timeout=120, interval=0.5, describe=lambda: logs_of(worker))
    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED, (batch.error, logs_of(worker))
    assert InferenceJob.objects.count() == 1


def test_an_idempotency_key_is_scoped_to_its_user(live_server, private_broker):
    first, second = UserFactory(username="ines"), UserFactory(username="joao")
    dataset = DatasetFactory(owner=first, class_counts=TINY_COUNTS, visibility="public")
    url = f"{live_server.url}/api/v1/training-jobs/"
    body = {"dataset": dataset.pk, "preset": "smoke", "config": smoke(epochs=1)}
    ids = set()
    for user in (first, second):
        headers = {"Authorization": f"Token {Token.objects.create(user=user).key}",
                   "Idempotency-Key": "same-key"}
        status, answer = post_at_once(url, body, headers, senders=1)[0]
        assert status == 201, answer
        ids.add(answer["id"])
    assert len(ids) == 2 and TrainingJob.objects.count() == 2
