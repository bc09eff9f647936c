"""Fixtures for training jobs: a tiny dataset, isolated working folders, and a real worker.

:func:`start_worker` launches ``celery worker --beat`` as a separate process pointed at the
test database and broker, so tests (here and in ``tests/browser/``) can watch a job go through
the same path it takes in production: broker message, claim, heartbeats, checkpoints, registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from reliability._procs import PlatformProcess, wait_for
from tests.factories import DatasetFactory, UserFactory

BASE_DIR = Path(__file__).resolve().parents[2]

# 3 classes of 28x28 RGB, small enough that a compact CNN epoch takes a fraction of a second.
TINY_COUNTS = {"train": [14, 13, 13], "val": [4, 4, 4], "test": [4, 4, 4]}


@pytest.fixture(autouse=True)
def work_dir(tmp_path, settings):
    """Checkpoints of every test in a folder of their own (job ids repeat between tests)."""
    settings.WORK_DIR = tmp_path / "work"
    return settings.WORK_DIR


@pytest.fixture
def owner(db):
    return UserFactory(username="olga")


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood", class_counts=TINY_COUNTS)


def smoke(**overrides) -> dict:
    """Overrides of the ``smoke`` preset that keep a run to a second or two of CPU."""
    return {"batch_size": 16, **overrides}


# --- a real worker -------------------------------------------------------------------------------


def database_url() -> str:
    """The test database, as a URL another process can open (it must be committed to be seen)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"
    raise NotImplementedError(f"no worker support for {db['ENGINE']}")


class Worker(PlatformProcess):
    """A ``celery worker --beat`` process in a session of its own; ``kill()`` ends all of it
    (the worker, its pool child and beat)."""


def start_worker(folder: Path, *, name: str = "worker", heartbeat_timeout: int = 4,
                 sweep_interval: float = 2) -> Worker:
    """Start a worker on the test database and broker, with tasks not eager.

    ``folder`` holds its var folder, beat schedule, log and the shared checkpoint folder, so a
    second worker started on the same ``folder`` resumes what the first one left.
    """
    folder.mkdir(parents=True, exist_ok=True)
    var = folder / f"{name}-var"
    var.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "medplatform.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "MEDPLATFORM_VAR_DIR": str(var),
        "MEDPLATFORM_WORK_DIR": str(settings.WORK_DIR),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "JOB_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
        "JOB_SWEEP_INTERVAL": str(sweep_interval),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": "worker-under-test",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log_path = folder / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "medplatform", "worker", "--beat",
             "-Q", "default,training,inference", "--concurrency", "1", "--loglevel", "INFO",
             "--schedule", str(folder / f"{name}-beat"), "--hostname", f"{name}@%h"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Worker(process, log_path, name)


def send_tasks_to_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send tasks to the broker, as production does, instead of running them inline.

    The queues are emptied first: a message left by an earlier test (a worker killed before it
    acknowledged, a sweep's requeue) would otherwise be delivered to this test's worker.
    """
    from medplatform.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", False)
    app.control.purge()


@pytest.fixture
def celery_worker_process(transactional_db, monkeypatch, tmp_path) -> Callable[..., Worker]:
    """``celery_worker_process(name=...)`` starts a worker; every one is killed at teardown.

    Data must be committed for the worker to see it, hence ``transactional_db``; jobs created
    through the services are sent to the broker when their transaction commits.
    """
    send_tasks_to_the_broker(monkeypatch)
    started: list[Worker] = []

    def start(**kwargs) -> Worker:
        worker = start_worker(tmp_path / "workers", **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def wait_until(condition: Callable[[], object], *, timeout: float, interval: float = 0.25,
               describe: Callable[[], str] = lambda: "") -> object:
    """Poll ``condition`` until it returns something true; fail with ``describe()`` after timeout."""
    try:
        return wait_for(condition, timeout=timeout, interval=interval)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f} s. {describe()}")
