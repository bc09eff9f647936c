"""Fixtures for fault injection: a private Redis server as the broker, real worker processes
on the test database, and a TCP proxy that can cut the database off (PostgreSQL only).

Every process here is the test's own (see ``reliability/_procs.py``); the shared Redis and
PostgreSQL servers are only ever used as they are, never stopped or flushed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection

from reliability import _procs
from tests.training.conftest import database_url


@pytest.fixture(autouse=True)
def work_dir(tmp_path, settings):
    """Checkpoints of every test in a folder of their own (job ids repeat between tests)."""
    settings.WORK_DIR = tmp_path / "work"
    return settings.WORK_DIR


def _reset_producer_pool(app) -> None:
    """Forget the broker connections made so far, so that the next message uses the new URL.

    kombu keeps its pools in a process-wide registry keyed by connection: closing one there but
    leaving it registered would hand the closed pool to the next user of the same URL, so the
    registry is reset as a whole.
    """
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def private_redis(tmp_path):
    """A ``redis-server`` of the test's own, which the test may kill and start again."""
    server = _procs.RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def private_broker(private_redis, monkeypatch):
    """Tasks sent by this process go to ``private_redis`` (not run inline, as in unit tests)."""
    from medplatform.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", False)
    monkeypatch.setitem(app.conf, "broker_url", private_redis.url)
    _reset_producer_pool(app)
    yield private_redis
    _reset_producer_pool(app)


@pytest.fixture
def platform_env(transactional_db, private_broker, tmp_path, settings) -> Callable[..., dict]:
    """``platform_env(database_url=...)``: environment for a worker or web server process on
    the test database (committed data only) and the private broker."""

    def make(*, database: str | None = None, **extra: str) -> dict:
        return _procs.platform_env(
            database_url=database or database_url(), broker_url=private_broker.url,
            var_dir=tmp_path / "var", work_dir=settings.WORK_DIR,
            media_root=settings.MEDIA_ROOT, **extra)

    return make


@pytest.fixture
def worker_processes(platform_env, tmp_path) -> Callable[..., _procs.PlatformProcess]:
    """``worker_processes(name=..., env=...)`` starts a worker; all are killed at teardown."""
    started: list[_procs.PlatformProcess] = []

    def start(*, name: str = "worker", env: dict | None = None, **kwargs) -> _procs.PlatformProcess:
        worker = _procs.start_worker(tmp_path / "workers", name=name, env=env or platform_env(),
                                     **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def database_proxy():
    """A :class:`reliability._procs.TcpProxy` in front of the PostgreSQL test server."""
    if connection.vendor != "postgresql":
        pytest.skip("cutting the database off needs a networked database: set DATABASE_URL to "
                    "a PostgreSQL server (SQLite is a local file that cannot become unreachable)")
    proxy = _procs.TcpProxy((connection.settings_dict["HOST"] or "127.0.0.1",
                             int(connection.settings_dict["PORT"] or 5432)))
    yield proxy
    proxy.close()


def logs_of(*processes: _procs.PlatformProcess) -> str:
    """The tails of the processes' logs, for failure messages."""
    return "\n".join(f"--- {process.name} ---\n{process.log()[-4000:]}" for process in processes)
