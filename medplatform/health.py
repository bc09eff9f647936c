"""``/healthz``: database, broker and worker status as JSON (503 when the platform cannot work).

Anyone may ask (load balancers, container health checks): they get each check's ``ok`` and
timing. What the checks found (database vendor, worker names, error messages, which can name
internal hosts) is shown to staff only. Pinging the workers waits up to a second for their
replies, so its answer is kept for :data:`WORKERS_CHECK_SECONDS` in each web process: however
often the endpoint is called, a process pings at most once in that time.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from kombu import Connection

from medplatform.celery import app as celery_app


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # a health check reports every failure instead of raising it
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return {"ok": ok, "detail": detail, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def _broker() -> str:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        return conn.transport_cls if isinstance(conn.transport_cls, str) else "redis"


def _workers() -> list[str]:
    replies = celery_app.control.ping(timeout=1.0) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        raise RuntimeError("no worker answered within 1 s")
    return names


WORKERS_CHECK_SECONDS = 5.0
_workers_lock = threading.Lock()
_workers_checked: tuple[float, dict] | None = None  # (when, result) of the last ping


def _workers_check() -> dict:
    global _workers_checked
    with _workers_lock:  # concurrent checks wait for one ping instead of each sending theirs
        if _workers_checked and time.monotonic() - _workers_checked[0] < WORKERS_CHECK_SECONDS:
            return _workers_checked[1]
        result = _timed(_workers)
        _workers_checked = (time.monotonic(), result)
        return result


def _is_staff(request, *, database_ok: bool) -> bool:
    # Reading the user reads the session from the database: without one, details stay hidden
    # and the check still answers in JSON.
    if not database_ok:
        return False
    try:
        return request.user.is_staff
    except DatabaseError:
        return False


@never_cache
def healthz(request):
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    checks["workers"] = _workers_check() if checks["broker"]["ok"] else {
        "ok": False, "detail": "broker unreachable", "ms": 0,
    }
    if not _is_staff(request, database_ok=checks["database"]["ok"]):
        checks = {name: {k: v for k, v in check.items() if k != "detail"}
                  for name, check in checks.items()}
    # Web requests work without a worker (jobs wait in the queue), so workers don't fail the check.
    healthy = checks["database"]["ok"] and checks["broker"]["ok"]
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )
