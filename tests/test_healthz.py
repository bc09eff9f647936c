"""Tests of /healthz: what a load balancer or an operator sees of the platform's state."""

from __future__ import annotations

import socket
import time

import pytest

from medplatform import health
from medplatform.celery import app as celery_app
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on leaving, so nothing listens there


@pytest.fixture(autouse=True)
def fresh_worker_check(monkeypatch):
    monkeypatch.setattr(health, "_workers_checked", None)


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(username="stan", staff=True))
    return client


@pytest.fixture
def dead_broker(settings):
    """Point the platform at a broker address where nothing listens; restore it afterwards."""
    url = f"redis://127.0.0.1:{_unused_tcp_port()}/0"
    previous = celery_app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    celery_app.conf.broker_url = url
    try:
        yield url
    finally:
        celery_app.conf.broker_url = previous


def test_healthz_answers_without_login_but_shows_what_it_found_to_staff_only(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True and checks["broker"]["ok"] is True
    assert all(set(check) == {"ok", "ms"} for check in checks.values())


def test_healthz_pings_the_workers_at_most_once_in_a_few_seconds(client, monkeypatch):
    pings = []
    monkeypatch.setattr(celery_app.control, "ping",
                        lambda timeout: pings.append(timeout) or [{"worker@host": "pong"}])
    for _ in range(5):
        assert client.get("/healthz").json()["checks"]["workers"]["ok"] is True
    assert pings == [1.0]
    monkeypatch.setattr(health, "_workers_checked", (time.monotonic() - 6, {}))  # 6 s later
    client.get("/healthz")
    assert len(pings) == 2


def test_healthz_reports_database_and_broker_ok_to_staff(staff_client):
    client = staff_client
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    body = response.json()
    assert body["status"] == "ok"
    checks = body["checks"]
    assert checks["database"]["ok"] is True
    assert checks["database"]["detail"] in ("sqlite", "postgresql")
    assert checks["broker"]["ok"] is True
    # No worker runs during tests: the check is reported, and does not fail the platform.
    assert isinstance(checks["workers"]["ok"], bool)
    assert checks["workers"]["detail"]
    for check in checks.values():
        assert check["ms"] >= 0


def test_healthz_is_unavailable_when_the_broker_is_unreachable(staff_client, dead_broker):
    response = staff_client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    broker = body["checks"]["broker"]
    assert broker["ok"] is False
    assert "refused" in broker["detail"].lower()
    assert body["checks"]["workers"] == {"ok": False, "detail": "broker unreachable", "ms": 0}



def test_healthz_answers_json_to_a_logged_in_user_while_the_database_is_down(
        staff_client, monkeypatch):
    from django.db import OperationalError, connections

    def refused(*args, **kwargs):
        raise OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(connections["default"], "cursor", refused)
    response = staff_client.get("/healthz")
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    database = response.json()["checks"]["database"]
    assert database["ok"] is False and set(database) == {"ok", "ms"}  # no session: no details
