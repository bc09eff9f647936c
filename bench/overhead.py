"""Platform overhead: a training job through queue + worker + checkpoints + history, against the
same ``model.fit`` in a bare script (same architecture, data, batch size, epochs, optimizer).

The platform side runs in a private folder: SQLite, the embedded Redis and one real Celery worker.
The worker is warmed up with a one-epoch job first, so both sides are timed with TensorFlow
already loaded; then bare fits and platform jobs alternate, three of each, and their medians are
compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, data_dir

CONFIG = {"architecture": "compact_cnn", "epochs": 4, "batch_size": 128, "optimizer": "adam",
          "learning_rate": 0.001, "schedule": "constant", "seed": 0}


def _bare_fit(epochs: int) -> float:
    import keras
    import tensorflow as tf

    from bench.recipes import dataset
    from medml.architectures import build_model

    data = dataset("bloodmnist")
    keras.utils.set_random_seed(0)
    model = build_model("compact_cnn", input_shape=data.image_shape, num_classes=data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train = (tf.data.Dataset.from_tensor_slices((data.images("train"), data.labels("train")))
             .shuffle(len(data.labels("train")), seed=0).batch(128).prefetch(tf.data.AUTOTUNE))
    val = (tf.data.Dataset.from_tensor_slices((data.images("val"), data.labels("val")))
           .batch(256).prefetch(tf.data.AUTOTUNE))
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    return time.perf_counter() - started


class _Platform:
    """A private platform (SQLite, the embedded Redis, one Celery worker on ``training``)."""

    def __enter__(self) -> _Platform:
        var = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
        env = {**os.environ, "MEDPLATFORM_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE":
               "medplatform.settings", "MEDMNIST_DIR": str(data_dir())}
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        os.environ.update({k: env[k] for k in ("MEDPLATFORM_VAR_DIR", "DJANGO_SETTINGS_MODULE",
                                              "MEDMNIST_DIR")})
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("REDIS_URL", None)
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
        subprocess.run([*manage, "import_medmnist", "bloodmnist", "-v", "0"], env=env, check=True)

        from medplatform.embedded_redis import EmbeddedRedis
        from medplatform.env import embedded_redis_socket

        self.redis = EmbeddedRedis(embedded_redis_socket(var)).start()
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "medplatform", "worker", "-Q", "training",
             "--concurrency", "1", "--loglevel", "WARNING"],
            env=env, cwd=ROOT, start_new_session=True)
        import django

        django.setup()
        from django.contrib.auth import get_user_model

        from classifier.models import Dataset

        self.owner = get_user_model().objects.create_user("bench", password="unused-password-1")
        self.dataset = Dataset.objects.get(slug="bloodmnist")
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.worker.pid, 15)
        self.worker.wait(timeout=60)
        self.redis.stop()

    def run_job(self, config: dict) -> dict:
        """Enqueue → SUCCEEDED, then wait (untimed) for the worker to finish the model's full
        evaluation, so that nothing of this job runs during the next measurement."""
        from classifier.models import ModelVersion
        from training import services
        from training.models import TrainingJob

        started = time.perf_counter()
        job, _ = services.training_job_create(owner=self.owner, dataset=self.dataset, config=config)
        while True:
            job.refresh_from_db()
            if job.is_terminal:
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise RuntimeError(f"platform job ended {job.status}: {job.error}")
        # The full report (bootstrap intervals included) replaces the basic test metrics last.
        deadline = time.monotonic() + 300
        while (time.monotonic() < deadline
               and "confidence_intervals" not in ModelVersion.objects.get(pk=job.model_version_id).metrics
               and not any("full evaluation" in str(line) for line in job.log)):
            time.sleep(0.5)
            job.refresh_from_db()
        return {"seconds": seconds, "job_train_seconds": job.model_version.train_seconds,
                "epochs": len(job.history)}


def run(*, seeds=None, quick: bool = False) -> dict:
    """Bare fits and platform jobs alternate, so a change in the machine's speed (this one's
    epochs vary by tens of percent from minute to minute) hits both sides; medians compared."""
    epochs = 2 if quick else CONFIG["epochs"]
    repeats = 1 if quick else 3
    bare, platform = [], []
    with _Platform() as server:
        server.run_job({**CONFIG, "epochs": 1})  # warm-up: the worker loads TensorFlow once
        for index in range(repeats):
            bare.append(_bare_fit(epochs))
            platform.append(server.run_job({**CONFIG, "epochs": epochs}))
            print(f"   round {index + 1}/{repeats}: bare model.fit {bare[-1]:.1f} s, platform job "
                  f"{platform[-1]['seconds']:.1f} s", flush=True)
    bare_median = float(np.median(bare))
    platform_median = float(np.median([p["seconds"] for p in platform]))
    ratio = platform_median / bare_median
    print(f"   median bare {bare_median:.1f} s, platform {platform_median:.1f} s, ratio {ratio:.3f}",
          flush=True)
    return {"config": {**CONFIG, "epochs": epochs}, "dataset": "bloodmnist", "repeats": repeats,
            "bare_fit_seconds": bare_median, "bare_fit_runs": bare,
            "platform": {"seconds": platform_median, "runs": platform},
            "ratio": ratio, "pair_ratios": [p["seconds"] / b for p, b in zip(platform, bare, strict=True)],
            "target_ratio": 1.10, "met": ratio <= 1.10}
