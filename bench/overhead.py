"""Platform overhead: a training job through queue + worker + checkpoints + history, against the
same ``model.fit`` in a bare script (same architecture, data, batch size, epochs, optimizer).

The platform side runs in a private folder: SQLite, the embedded Redis and one real Celery worker.
The worker is warmed up with a one-epoch job first, so both sides are timed with TensorFlow
already loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _platform_job(epochs: int) -> dict:
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

    redis = EmbeddedRedis(embedded_redis_socket(var)).start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "medplatform", "worker", "-Q", "training",
         "--concurrency", "1", "--loglevel", "WARNING"],
        env=env, cwd=ROOT, start_new_session=True)
    try:
        import django

        django.setup()
        from django.contrib.auth import get_user_model

        from classifier.models import Dataset
        from training import services
        from training.models import TrainingJob

        owner = get_user_model().objects.create_user("bench", password="unused-password-1")
        blood = Dataset.objects.get(slug="bloodmnist")

        def run_job(config: dict) -> tuple[float, TrainingJob]:
            started = time.perf_counter()
            job, _ = services.training_job_create(owner=owner, dataset=blood, config=config)
            while True:
                job.refresh_from_db()
                if job.is_terminal:
                    return time.perf_counter() - started, job
                time.sleep(0.2)

        run_job({**CONFIG, "epochs": 1})  # warm-up: the worker loads TensorFlow once
        seconds, job = run_job({**CONFIG, "epochs": epochs})
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise RuntimeError(f"platform job ended {job.status}: {job.error}")
        return {"seconds": seconds, "job_train_seconds": job.model_version.train_seconds,
                "epochs": len(job.history)}
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        redis.stop()


def run(*, seeds=None, quick: bool = False) -> dict:
    epochs = 2 if quick else CONFIG["epochs"]
    bare = _bare_fit(epochs)
    platform = _platform_job(epochs)
    ratio = platform["seconds"] / bare
    print(f"   bare model.fit {bare:.1f} s, platform job {platform['seconds']:.1f} s, "
          f"ratio {ratio:.3f}", flush=True)
    return {"config": {**CONFIG, "epochs": epochs}, "dataset": "bloodmnist",
            "bare_fit_seconds": bare, "platform": platform, "ratio": ratio,
            "target_ratio": 1.10, "met": ratio <= 1.10}
