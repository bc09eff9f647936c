"""Tests of /healthz: what a load balancer or an operator sees of the platform's state."""

from __future__ import annotations

import socket

import pytest

from medplatform.celery import app as celery_app

pytestmark = pytest.mark.django_db


def _unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on leaving, so nothing listens there


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


def test_healthz_reports_database_and_broker_ok_without_login(client):
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


def test_healthz_is_unavailable_when_the_broker_is_unreachable(client, dead_broker):
    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    broker = body["checks"]["broker"]
    assert broker["ok"] is False
    assert "refused" in broker["detail"].lower()
    assert body["checks"]["workers"] == {"ok": False, "detail": "broker unreachable", "ms": 0}

