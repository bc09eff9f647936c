"""The Celery application. Workers: ``celery -A medplatform worker -Q default,training,inference``."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medplatform.settings")

app = Celery("medplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("training"), Queue("inference"))
app.conf.task_routes = {
    "training.tasks.run_training_job": {"queue": "training"},
    "training.tasks.run_inference_job": {"queue": "inference"},
}
app.autodiscover_tasks()
