"""The Celery application. Workers: ``celery -A medplatform worker -Q default,training,inference``."""

from __future__ import annotations

import base64
import json
import logging
import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medplatform.settings")

logger = logging.getLogger(__name__)

app = Celery("medplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("training"), Queue("inference"))
app.conf.task_routes = {
    "training.tasks.run_training_job": {"queue": "training"},
    "training.tasks.run_inference_job": {"queue": "inference"},
}
app.autodiscover_tasks()


def _message_task_and_args(raw: bytes) -> tuple[str, tuple] | None:
    """The task name and positional arguments of one message as the Redis transport stores it."""
    try:
        message = json.loads(raw)
        task = message["headers"]["task"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]  # task protocol 2: [args, kwargs, embed]
        return task, tuple(args)
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def waiting_task_args(task_name: str) -> list[tuple] | None:
    """The arguments of every ``task_name`` message waiting in its queue, one tuple per message.

    Reads the Redis broker's queue lists (every priority level) without consuming anything.
    Messages a worker has already taken are not listed. Returns None when the broker is not
    Redis or cannot be reached, so that callers act only on what they could see.
    """
    queue = app.conf.task_routes.get(task_name, {}).get("queue", app.conf.task_default_queue)
    try:
        with app.connection_for_read(connect_timeout=2) as conn:
            if conn.transport.driver_type != "redis":
                return None
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            keys = [channel._q_for_pri(queue, priority) for priority in channel.priority_steps]
            raw = [item for key in keys for item in channel.client.lrange(key, 0, -1)]
    except Exception as exc:  # an unreachable broker is an answer here, not an error
        logger.warning("cannot read the %s queue from the broker: %s", queue, exc)
        return None
    found = []
    for item in raw:
        parsed = _message_task_and_args(item)
        if parsed and parsed[0] == task_name:
            found.append(parsed[1])
    return found
