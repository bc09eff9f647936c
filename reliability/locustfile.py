"""Locust users for the load check (:mod:`reliability.load` starts them; see docs/reliability/load.md).

Each simulated user logs in with an account of its own (``POST /api/v1/auth/token/``) and then
mixes, with the weights below: classifying freshly generated PNGs (one or several per request,
sometimes with Grad-CAM or test-time augmentation), importing small ``.npz`` datasets, reading its
prediction history, stored images, models, datasets and job status, launching training jobs and
launching batch inference jobs (on an uploaded ``.npz`` or a dataset split).

Job launches are paced per Locust process (one training job every ``training_interval_s``, one
inference job every ``inference_interval_s``), so a single worker keeps up; a user whose turn
comes too early reads job status instead.

What the users need comes from the JSON file named by ``LOAD_SETUP`` (accounts, the dataset and
model to use, pacing). Every accepted upload (a 2xx answer) is written, with the sha256 of the
bytes sent, to ``LOAD_RECORDS_DIR/records-<pid>.jsonl``, one file per Locust process, together
with the jobs launched and every unexpected answer; :mod:`reliability.load` checks them against
the database and storage afterwards.

Run only through Locust (``locust -f reliability/locustfile.py``): importing Locust patches the
standard library with gevent.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import time
import uuid
from pathlib import Path

import numpy as np
from locust import HttpUser, between, events, task
from locust.stats import sort_stats
from PIL import Image

SETUP = json.loads(Path(os.environ["LOAD_SETUP"]).read_text())
RECORDS_PATH = Path(os.environ["LOAD_RECORDS_DIR"]) / f"records-{os.getpid()}.jsonl"
STATS_PATH = Path(os.environ["LOAD_RECORDS_DIR"]) / f"stats-{os.getpid()}.json"
REQUEST_TIMEOUT_S = 120.0  # an answer slower than this counts as a connection error

_accounts = itertools.cycle(SETUP["accounts"])
_records = None
_last_launch = {"training": 0.0, "inference": 0.0}
# Weight of each of the two launch tasks: 1 in the documented mix. A short run raises it so that
# its few task picks are sure to reach the launches (which stay paced by the intervals).
LAUNCH_WEIGHT = int(SETUP.get("launch_weight", 1))


def record(kind: str, **fields) -> None:
    """Append one line to this process's records file (flushed at once, so a crash keeps it)."""
    global _records
    if _records is None:
        RECORDS_PATH.parent.mkdir(parents=True, exist_ok=True)
        _records = open(RECORDS_PATH, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
    _records.write(json.dumps({"kind": kind, "at": round(time.time(), 3), **fields}) + "\n")
    _records.flush()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_png(size: int, channels: int) -> bytes:
    """A PNG of random pixels at the dataset's size (RGB or grayscale like the dataset)."""
    shape = (size, size, 3) if channels == 3 else (size, size)
    buffer = io.BytesIO()
    Image.fromarray(np.random.randint(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def random_images(count: int, size: int, channels: int) -> np.ndarray:
    shape = (count, size, size, 3) if channels == 3 else (count, size, size)
    return np.random.randint(0, 256, shape, dtype=np.uint8)


def dataset_npz(size: int, channels: int) -> bytes:
    """A tiny two-class dataset in the official MedMNIST key layout (and only those keys, so the
    platform stores the file byte for byte)."""
    counts = {"train": 12, "val": 4, "test": 4}
    arrays = {}
    for split, count in counts.items():
        arrays[f"{split}_images"] = random_images(count, size, channels)
        labels = np.random.permutation(np.arange(count) % 2).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def inference_npz(count: int, size: int, channels: int, num_classes: int) -> bytes:
    """Batch inference input: ``images`` with ``labels``, as the batch API accepts."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=random_images(count, size, channels),
                        labels=np.random.randint(0, num_classes, count).astype(np.uint8))
    return buffer.getvalue()


def _entry(entry) -> dict:
    """One Locust statistics entry: counts and latency percentiles in milliseconds."""
    return {"method": entry.method or "", "name": entry.name, "requests": entry.num_requests,
            "failures": entry.num_failures, "requests_per_s": entry.total_rps,
            "mean_ms": entry.avg_response_time,
            **{f"p{p}_ms": entry.get_response_time_percentile(p / 100) for p in (50, 90, 95, 99)},
            "max_ms": entry.max_response_time}


@events.quitting.add_listener
def write_final_stats(environment, **_kwargs) -> None:
    """Locust's statistics once the run is over (its CSV files are only written periodically),
    to ``LOAD_RECORDS_DIR/stats-<pid>.json``."""
    stats = environment.stats
    runner = environment.runner
    payload = {
        "endpoints": [_entry(e) for e in sort_stats(stats.entries)],
        "aggregated": _entry(stats.total),
        "failures": [{"method": e.method, "name": e.name, "error": str(e.error),
                      "occurrences": e.occurrences} for e in stats.errors.values()],
        "exceptions": [{"count": e["count"], "message": e["msg"], "traceback": e["traceback"]}
                       for e in (runner.exceptions.values() if runner else [])],
    }
    STATS_PATH.write_text(json.dumps(payload, indent=1))


def _claim_launch(kind: str) -> bool:
    """True when this process may launch a ``kind`` job now (pacing shared by its users)."""
    interval = SETUP[f"{kind}_interval_s"]
    now = time.monotonic()
    if now - _last_launch[kind] < interval:
        return False
    _last_launch[kind] = now
    return True


class PlatformUser(HttpUser):
    """One person using the platform through the API with their own token."""

    wait_time = between(SETUP.get("wait_min_s", 0.5), SETUP.get("wait_max_s", 2.0))

    def on_start(self) -> None:
        self.account = next(_accounts)
        self.dataset = SETUP["dataset"]
        self.model_id = SETUP["model_id"]
        self.predictions: list[tuple[int, str]] = []  # (id, sha256 sent), most recent last
        self.training_jobs: list[int] = []
        self.inference_jobs: list[int] = []
        self.datasets: list[int] = []
        body = self._call("POST", "/api/v1/auth/token/", "/api/v1/auth/token/",
                          json={"username": self.account["username"],
                                "password": self.account["password"]}, expect=(200,))
        if body is None:
            raise RuntimeError(f"{self.account['username']} could not log in")
        self.client.headers["Authorization"] = f"Token {body['token']}"

    # --- one request, judged --------------------------------------------------------------------

    def _call(self, method: str, url: str, name: str, *, expect=(200,), **kwargs):
        """Send one request; an answer outside ``expect`` is a Locust failure and a record.

        Returns the decoded JSON body (or the raw bytes for non-JSON answers), ``None`` on failure.
        """
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        with self.client.request(method, url, name=name, catch_response=True, **kwargs) as response:
            status = response.status_code
            if not status:
                response.failure(f"connection error: {response.error!r}")
                record("error", method=method, name=name, status=0, detail=repr(response.error))
                return None
            if status not in expect:
                detail = (response.text or "")[:500]
                response.failure(f"HTTP {status}: {detail[:200]}")
                record("error", method=method, name=name, url=url, status=status, detail=detail,
                       user=self.account["username"])
                return None
            if not response.headers.get("Content-Type", "").startswith("application/json"):
                response.success()
                return response.content
            try:
                payload = response.json()
            except ValueError:
                response.failure(f"HTTP {status} with a body that is not JSON")
                record("error", method=method, name=name, status=status, detail="body is not JSON")
                return None
            response.success()
            return payload

    # --- uploads --------------------------------------------------------------------------------

    @task(12)
    def classify(self) -> None:
        """Upload 1-4 fresh images; sometimes Grad-CAM and/or test-time augmentation."""
        count = random.choices([1, 2, 3, 4], weights=[6, 2, 1, 1])[0]
        images = [random_png(self.dataset["size"], self.dataset["channels"]) for _ in range(count)]
        gradcam = random.random() < 0.25
        tta = random.random() < 0.25
        fields = {"gradcam": str(gradcam).lower(), "tta": str(tta).lower()}
        # Mostly the shared model; sometimes the dataset's default model (which may change as
        # users train new ones, so workers load new models while serving).
        if random.random() < 0.75:
            fields["model"] = str(self.model_id)
        else:
            fields["dataset"] = str(self.dataset["id"])
        files = [("images", (f"image-{i}.png", data, "image/png")) for i, data in enumerate(images)]
        name = "/api/v1/predictions/ " + ("gradcam" if gradcam else "no gradcam")
        body = self._call("POST", "/api/v1/predictions/", name, data=fields, files=files,
                          expect=(201,))
        if body is None:
            return
        if not isinstance(body, list) or len(body) != count:
            record("error", method="POST", name=name, status=201,
                   detail=f"sent {count} images, got {len(body) if isinstance(body, list) else body!r}")
            return
        for prediction, data in zip(body, images, strict=True):
            digest = sha256(data)
            record("prediction", id=prediction["id"], sha256=digest,
                   server_sha256=prediction.get("image_sha256"), user=self.account["username"])
            self.predictions.append((prediction["id"], digest))
        del self.predictions[:-50]

    @task(1)
    def import_dataset(self) -> None:
        """Import a tiny two-class ``.npz`` dataset of one's own."""
        data = dataset_npz(self.dataset["size"], self.dataset["channels"])
        body = self._call(
            "POST", "/api/v1/datasets/", "/api/v1/datasets/ import",
            data={"name": f"load {self.account['username']} {uuid.uuid4().hex[:8]}",
                  "class_names": "negative,positive"},
            files={"file": ("tiny.npz", data, "application/octet-stream")}, expect=(201,))
        if body is not None:
            record("dataset", id=body["id"], sha256=sha256(data), server_sha256=body.get("sha256"),
                   user=self.account["username"])
            self.datasets.append(body["id"])

    # --- reads ----------------------------------------------------------------------------------

    @task(3)
    def read_history(self) -> None:
        self._call("GET", "/api/v1/predictions/?limit=20", "/api/v1/predictions/ history")

    @task(2)
    def read_prediction(self) -> None:
        """One of one's own predictions, and its stored image compared with what was sent."""
        if not self.predictions:
            return
        prediction_id, digest = random.choice(self.predictions)
        self._call("GET", f"/api/v1/predictions/{prediction_id}/", "/api/v1/predictions/{id}/")
        data = self._call("GET", f"/api/v1/predictions/{prediction_id}/image/",
                          "/api/v1/predictions/{id}/image/")
        if isinstance(data, bytes) and sha256(data) != digest:
            record("error", method="GET", name="/api/v1/predictions/{id}/image/", status=200,
                   detail=f"prediction {prediction_id}: image read back differs from the upload")

    @task(2)
    def read_models(self) -> None:
        self._call("GET", f"/api/v1/models/?dataset={self.dataset['id']}", "/api/v1/models/")

    @task(1)
    def read_datasets(self) -> None:
        self._call("GET", "/api/v1/datasets/", "/api/v1/datasets/")
        if self.datasets:
            self._call("GET", f"/api/v1/datasets/{random.choice(self.datasets)}/",
                       "/api/v1/datasets/{id}/")

    @task(2)
    def read_jobs(self) -> None:
        self._call("GET", "/api/v1/training-jobs/?limit=10", "/api/v1/training-jobs/")
        if self.training_jobs:
            self._call("GET", f"/api/v1/training-jobs/{random.choice(self.training_jobs)}/",
                       "/api/v1/training-jobs/{id}/")
        if self.inference_jobs:
            self._call("GET", f"/api/v1/inference-jobs/{random.choice(self.inference_jobs)}/",
                       "/api/v1/inference-jobs/{id}/")

    # --- jobs -----------------------------------------------------------------------------------

    @task(LAUNCH_WEIGHT)
    def launch_training(self) -> None:
        """A tiny training job (paced); otherwise a look at one's jobs."""
        if not _claim_launch("training"):
            self.read_jobs()
            return
        body = self._call(
            "POST", "/api/v1/training-jobs/", "/api/v1/training-jobs/ launch",
            json={"dataset": self.dataset["id"], "preset": SETUP["training_preset"],
                  "config": SETUP["training_config"], "name": f"load {self.account['username']}"},
            headers={"Idempotency-Key": uuid.uuid4().hex}, expect=(201,))
        if body is not None:
            record("training_job", id=body["id"], user=self.account["username"])
            self.training_jobs.append(body["id"])

    @task(LAUNCH_WEIGHT)
    def launch_inference(self) -> None:
        """A batch inference job on an uploaded ``.npz`` or the test split (paced)."""
        if not _claim_launch("inference"):
            self.read_jobs()
            return
        if random.random() < 0.5:
            data = inference_npz(random.randint(8, 64), self.dataset["size"], self.dataset["channels"],
                                 self.dataset["num_classes"])
            body = self._call("POST", "/api/v1/inference-jobs/", "/api/v1/inference-jobs/ upload",
                              data={"model": str(self.model_id)},
                              files={"file": ("batch.npz", data, "application/octet-stream")},
                              expect=(201,))
            if body is not None:
                record("inference_input", id=body["id"], sha256=sha256(data),
                       user=self.account["username"])
        else:
            body = self._call("POST", "/api/v1/inference-jobs/", "/api/v1/inference-jobs/ split",
                              json={"model": self.model_id, "split": "test"}, expect=(201,))
        if body is not None:
            record("inference_job", id=body["id"], user=self.account["username"])
            self.inference_jobs.append(body["id"])
