"""Load check: many users at once against gunicorn and a Celery worker, nothing lost, no 5xx.

``python -m reliability.load --users 20 --minutes 3`` (see docs/reliability/load.md):

1. Sets up a private platform in a temporary ``MEDPLATFORM_VAR_DIR``: the database from
   ``DATABASE_URL`` when set, else SQLite; the broker from ``REDIS_URL`` when set, else the
   embedded Redis server (the launcher's choices). It migrates, collects the static files,
   imports a small synthetic 28x28 RGB dataset, creates one account per simulated user, and
   starts gunicorn (the launcher's 2 workers x 4 threads) and one Celery worker with the beat
   scheduler on every queue.
2. Trains a tiny model through the worker (a ``smoke`` training job, one epoch), which also warms
   the worker up, publishes it, and sends a few warm-up classifications so each web worker has
   loaded TensorFlow and the model before the measured run.
3. Runs Locust headless (:mod:`reliability.locustfile`) as a subprocess, printing a progress line
   every few seconds.
4. Waits (up to ``--grace`` seconds) for every launched job to reach a terminal state, stops the
   servers, then checks:

   * every upload the client saw accepted (a 2xx answer) has its row (``Prediction``,
     ``Dataset``, ``InferenceJob``) and a stored file, read through Django's storage, whose sha256
     is the one of the bytes the client sent;
   * no answer had a status of 500 or more, and no request failed to connect or timed out (from
     the client's records, Locust's failure statistics and gunicorn's access log);
   * every launched job finished (succeeded, failed or cancelled), or how many had not.

Writes ``reliability/results/load.json`` (configuration, machine, load average, per-endpoint
counts and latency percentiles from Locust, lost uploads, errors, jobs) and prints a summary;
exits with 1 when a check fails. ``--render`` prints the Markdown tables of a results file and
``--update-doc`` writes them into docs/reliability/load.md. Every process started is stopped on
exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import http.client
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from bench.common import ROOT, _json_default
from bench.serving import _free_port, _load

RESULTS = ROOT / "reliability" / "results"
DEFAULT_OUT = RESULTS / "load.json"
DOC = ROOT / "docs" / "reliability" / "load.md"
DOC_START, DOC_END = "<!-- load-results:start -->", "<!-- load-results:end -->"
LOCUSTFILE = ROOT / "reliability" / "locustfile.py"

DATASET = {"size": 28, "channels": 3, "class_names": ["alpha", "beta", "gamma"],
           "counts": {"train": [60, 50, 40], "val": [10, 10, 10], "test": [20, 20, 20]}}
TRAINING = {"preset": "smoke", "config": {"epochs": 1}}
TERMINAL = {"succeeded", "failed", "cancelled"}
PROGRESS_EVERY_S = 10.0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reliability.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="Concurrent simulated users.")
    parser.add_argument("--minutes", type=float, default=3.0, help="Length of the measured run.")
    parser.add_argument("--seconds", type=float, help="Length in seconds (instead of --minutes).")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="Users started per second.")
    parser.add_argument("--web-workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument("--keep-alive", type=int, default=int(os.environ.get("WEB_KEEP_ALIVE", "65")),
                        help="gunicorn's --keep-alive in seconds (default: the launcher's, 65).")
    parser.add_argument("--worker-concurrency", type=int,
                        default=int(os.environ.get("WORKER_CONCURRENCY", "2")))
    parser.add_argument("--training-interval", type=float, default=15.0,
                        help="Seconds between training job launches (all users together).")
    parser.add_argument("--inference-interval", type=float, default=10.0,
                        help="Seconds between batch inference job launches (all users together).")
    parser.add_argument("--launch-weight", type=int, default=1,
                        help="Task weight of each job launch (default 1, the documented mix; a "
                             "short run raises it so that launches surely come up).")
    parser.add_argument("--grace", type=float, default=300.0,
                        help="Seconds to wait after the run for launched jobs to finish.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Results file (JSON).")
    parser.add_argument("--var-dir", type=Path,
                        help="Platform folder to use and keep (default: a temporary one, removed "
                             "when every check passes).")
    parser.add_argument("--skip-collectstatic", action="store_true",
                        help="Do not collect the static files (the API does not use them).")
    parser.add_argument("--render", action="store_true",
                        help="Only print the Markdown tables of the --out results file.")
    parser.add_argument("--update-doc", action="store_true",
                        help=f"Only write the tables of the --out results file into {DOC.relative_to(ROOT)}.")
    return parser.parse_args(argv)


# --- processes -----------------------------------------------------------------------------------


def _spawn(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A child in a session of its own (so it and what it forks can be signalled as a group)."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_for_web(port: int, processes: dict, timeout: float = 180.0) -> None:
    """Until ``/healthz`` says the database and broker are fine and a worker answers."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for name in ("web", "worker"):
            if processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited with code {processes[name].returncode} during start-up")
        try:
            status, body = _get(port, "/healthz")
            checks = json.loads(body).get("checks", {})
            if status == 200 and checks.get("workers", {}).get("ok"):
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise RuntimeError(f"the platform was not ready within {timeout:.0f} s ({last})")


# --- set-up (in this process, through Django) ----------------------------------------------------


def _environment(var: Path) -> dict:
    """The platform's environment: a private folder; DATABASE_URL and REDIS_URL as given."""
    env = {**os.environ, "MEDPLATFORM_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE":
           "medplatform.settings", "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1,localhost",
           "LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1",
           "PYTHONUNBUFFERED": "1"}
    for key in ("MEDIA_ROOT", "MODEL_CACHE_DIR", "STATIC_ROOT", "MEDPLATFORM_WORK_DIR"):
        env.pop(key, None)  # all under the private folder
    return env


def _dataset_npz(seed: int = 0) -> bytes:
    """A small 3-class dataset of random pixels in the official MedMNIST key layout."""
    rng = np.random.default_rng(seed)
    size, channels = DATASET["size"], DATASET["channels"]
    arrays = {}
    for split, counts in DATASET["counts"].items():
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), size, size, channels),
                                                 dtype=np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _seed_catalog(run_id: str, users: int) -> dict:
    """The shared dataset (public), its owner, and one account per simulated user."""
    from django.contrib.auth import get_user_model

    from classifier import services
    from classifier.models import Visibility

    accounts_model = get_user_model()
    owner = accounts_model.objects.create_user(f"load-{run_id}-owner", password=uuid.uuid4().hex)
    dataset = services.dataset_import(
        source=io.BytesIO(_dataset_npz()), filename="load-synthetic.npz", owner=owner,
        name=f"Load synthetic {run_id}", visibility=Visibility.PUBLIC,
        class_names=DATASET["class_names"])
    accounts = []
    for index in range(users):
        username, password = f"load-{run_id}-{index:02d}", uuid.uuid4().hex
        accounts_model.objects.create_user(username, password=password)
        accounts.append({"username": username, "password": password})
    return {"owner": owner, "dataset": dataset, "accounts": accounts}


def _queue_seed_job(owner, dataset):
    """A tiny model to serve, trained by the worker as a normal training job (queued now, so it
    starts as soon as the worker is up)."""
    from training import services

    job, _ = services.training_job_create(owner=owner, dataset=dataset, preset=TRAINING["preset"],
                                          config=TRAINING["config"], name="load seed model")
    return job


def _seed_model(job, timeout: float = 900.0):
    """The seed job's model, once trained, made public so every user can classify with it."""
    from classifier.models import ModelVersion, Visibility
    from training.models import TrainingJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in TERMINAL:
            break
        time.sleep(0.5)
    if job.status != TrainingJob.Status.SUCCEEDED:
        raise RuntimeError(f"the seed training job #{job.pk} ended {job.status}: {job.error}")
    ModelVersion.objects.filter(pk=job.model_version_id).update(visibility=Visibility.PUBLIC)
    return ModelVersion.objects.get(pk=job.model_version_id)


def _warm_up(port: int, token: str, model_id: int) -> list[int]:
    """Classifications of 1-4 images, with and without Grad-CAM and TTA, sent concurrently (twice),
    so every web worker has loaded TensorFlow and the model and traced its functions for these
    batch sizes before the measured run; returns their statuses."""
    from PIL import Image

    rng = np.random.default_rng(1)
    statuses: list[int] = []

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (DATASET["size"], DATASET["size"], 3), dtype=np.uint8)
                        ).save(buffer, format="PNG")
        return buffer.getvalue()

    def body(index: int) -> tuple[bytes, str]:
        boundary = uuid.uuid4().hex
        fields = {"model": str(model_id), "gradcam": ["false", "true"][index // 4 % 2],
                  "tta": ["false", "true"][index // 8 % 2]}
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        for _ in range(1 + index % 4):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                         f'filename="warm.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + png()
                         + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return b"".join(parts), f"multipart/form-data; boundary={boundary}"

    def send(payload: bytes, content_type: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            conn.request("POST", "/api/v1/predictions/", body=payload, headers={
                "Authorization": f"Token {token}", "Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        except OSError:
            statuses.append(0)
        finally:
            conn.close()

    for _ in range(2):  # two rounds: the second reaches workers the first one missed
        threads = [threading.Thread(target=send, args=body(i)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return statuses


# --- the measured run ----------------------------------------------------------------------------


def _history_row(prefix: Path) -> dict | None:
    """The latest aggregated row of Locust's stats history, if any."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return None
    with contextlib.suppress(OSError, csv.Error):
        rows = [r for r in csv.DictReader(path.read_text().splitlines()) if r.get("Name") == "Aggregated"]
        return rows[-1] if rows else None
    return None


def _count_records(records_dir: Path) -> int:
    """Accepted uploads recorded by the client so far."""
    total = 0
    for path in records_dir.glob("records-*.jsonl"):
        with contextlib.suppress(OSError):
            total += sum(1 for line in path.read_text().splitlines()
                         if '"kind": "prediction"' in line or '"kind": "dataset"' in line
                         or '"kind": "inference_input"' in line)
    return total


def _run_locust(args, seconds: float, port: int, env: dict, var: Path, processes: dict) -> dict:
    prefix = var / "locust"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate), "--run-time", f"{int(seconds)}s",
               "--stop-timeout", "60", "--host", f"http://127.0.0.1:{port}", "--csv", str(prefix),
               "--only-summary", "--loglevel", "WARNING"]
    load_samples = [_load()]
    started = time.monotonic()
    processes["locust"] = _spawn(command, var / "locust.log", env)
    next_report = started + PROGRESS_EVERY_S
    while processes["locust"].poll() is None:
        for name in ("web", "worker"):
            if processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited with code {processes[name].returncode} during the run")
        time.sleep(0.5)
        if time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY_S
            load_samples.append(_load())
            row = _history_row(prefix) or {}
            print(f"   [{time.monotonic() - started:5.0f}/{seconds:.0f} s] "
                  f"{row.get('User Count', '0')} users, {row.get('Total Request Count', '0')} requests "
                  f"({float(row.get('Requests/s', 0) or 0):.1f}/s), "
                  f"{row.get('Total Failure Count', '0')} failures, "
                  f"{_count_records(var / 'records')} uploads accepted, "
                  f"load {load_samples[-1][0]}", flush=True)
    load_samples.append(_load())
    return {"exit_code": processes.pop("locust").returncode, "seconds": time.monotonic() - started,
            "command": " ".join(shlex.quote(c) for c in command), "load_samples": load_samples}


def _wait_for_jobs(records: list[dict], grace: float) -> float:
    """Seconds waited until every launched job is terminal (or ``grace`` ran out)."""
    from training.models import InferenceJob, TrainingJob

    training = [r["id"] for r in records if r["kind"] == "training_job"]
    inference = [r["id"] for r in records if r["kind"] == "inference_job"]
    started = time.monotonic()
    while time.monotonic() - started < grace:
        active = (TrainingJob.objects.filter(pk__in=training).exclude(status__in=TERMINAL).count()
                  + InferenceJob.objects.filter(pk__in=inference).exclude(status__in=TERMINAL).count())
        if not active:
            break
        print(f"   waiting for {active} job(s) to finish ({time.monotonic() - started:.0f} s)", flush=True)
        time.sleep(5.0)
    return time.monotonic() - started


# --- checks --------------------------------------------------------------------------------------


def _read_records(records_dir: Path) -> list[dict]:
    records = []
    for path in sorted(records_dir.glob("records-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def _stored_sha256(field) -> str | None:
    """sha256 of a stored file, read through Django's storage; ``None`` when it is missing."""
    if not field:
        return None
    try:
        with field.storage.open(field.name, "rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            return digest.hexdigest()
    except (FileNotFoundError, OSError):
        return None


def _verify_uploads(records: list[dict], run_id: str) -> dict:
    """Each accepted upload: its row exists and its stored file has the sha256 the client sent."""
    from classifier.models import Dataset, Prediction
    from training.models import InferenceJob

    kinds = {"prediction": (Prediction, "image", "image_sha256"),
             "dataset": (Dataset, "data_file", "sha256"),
             "inference_input": (InferenceJob, "input_file", None)}
    counts = dict.fromkeys(kinds, 0)
    lost: list[dict] = []
    for kind, (model, field, sha_field) in kinds.items():
        mine = [r for r in records if r["kind"] == kind]
        counts[kind] = len(mine)
        rows = model.objects.in_bulk([r["id"] for r in mine])
        for r in mine:
            row = rows.get(r["id"])
            if row is None:
                lost.append({"kind": kind, "id": r["id"], "problem": "no row"})
                continue
            stored = _stored_sha256(getattr(row, field))
            if stored is None:
                lost.append({"kind": kind, "id": r["id"], "problem": "no stored file"})
            elif stored != r["sha256"]:
                lost.append({"kind": kind, "id": r["id"], "problem": "stored file differs",
                             "sent": r["sha256"], "stored": stored})
            elif sha_field and getattr(row, sha_field) != r["sha256"]:
                lost.append({"kind": kind, "id": r["id"], "problem": "row's sha256 differs"})
    owned = Prediction.objects.filter(owner__username__startswith=f"load-{run_id}-")
    return {"accepted": counts, "accepted_total": sum(counts.values()),
            "verified": sum(counts.values()) - len(lost), "lost": len(lost), "lost_detail": lost[:50],
            # Rows whose answer the client never saw (requests cut at the end, timeouts): not
            # losses, reported so that nothing stored goes unaccounted.
            "prediction_rows_of_run_users": owned.exclude(owner__username__endswith="-owner").count()}


def _locust_stats(records_dir: Path) -> dict:
    """Locust's final statistics (written by the locustfile when Locust quits)."""
    files = [json.loads(path.read_text()) for path in records_dir.glob("stats-*.json")]
    if not files:
        return {"endpoints": [], "aggregated": None, "failures": [], "exceptions": []}
    return max(files, key=lambda f: f["aggregated"]["requests"])  # the master's, if distributed


def _errors(records: list[dict], locust: dict, var: Path) -> dict:
    """Server errors and connection errors, from the client's records, Locust and the servers."""
    errors = [r for r in records if r["kind"] == "error"]
    by_status: dict[str, int] = {}
    for r in errors:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
    failures = locust["failures"]
    locust_5xx = sum(f["occurrences"] for f in failures if re.match(r"HTTP 5\d\d", f["error"]))
    locust_connection = sum(f["occurrences"] for f in failures if not f["error"].startswith("HTTP "))
    access = var / "gunicorn-access.log"
    access_statuses = ([int(m.group(1)) for m in re.finditer(r'" (\d{3}) ', access.read_text())]
                       if access.exists() else [])
    logs = {name: (var / f"{name}.log").read_text(errors="replace") if (var / f"{name}.log").exists()
            else "" for name in ("web", "worker")}
    return {
        "server_errors": max(sum(1 for r in errors if r["status"] >= 500), locust_5xx,
                             sum(1 for s in access_statuses if s >= 500)),
        "connection_errors": max(sum(1 for r in errors if r["status"] == 0), locust_connection),
        "client_errors": sum(1 for r in errors if 400 <= r["status"] < 500),
        "other_failures": sum(1 for r in errors if 0 < r["status"] < 400),
        "client_exceptions": sum(e["count"] for e in locust["exceptions"]),
        "by_status": by_status,
        "locust_failures": sum(f["occurrences"] for f in failures),
        "access_log": {"requests": len(access_statuses),
                       "5xx": sum(1 for s in access_statuses if s >= 500)},
        "tracebacks": {name: text.count("Traceback (most recent call last)") for name, text in logs.items()},
        "first": errors[:20],
        "locust_failure_kinds": failures[:20],
        "locust_exceptions": locust["exceptions"][:5],
    }


def _spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {"n": len(arr), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "max": float(arr.max())}


def _jobs(records: list[dict], waited: float, grace: float) -> dict:
    from training.models import InferenceJob, TrainingJob

    out = {"grace_s": grace, "waited_s": round(waited, 1)}
    for kind, model in (("training", TrainingJob), ("inference", InferenceJob)):
        ids = [r["id"] for r in records if r["kind"] == f"{kind}_job"]
        rows = list(model.objects.filter(pk__in=ids))
        by_status: dict[str, int] = {}
        for row in rows:
            by_status[row.status] = by_status.get(row.status, 0) + 1
        waits = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
        runs = [(r.finished_at - r.started_at).total_seconds() for r in rows
                if r.started_at and r.finished_at]
        out[kind] = {"launched": len(ids), "rows": len(rows), "by_status": by_status,
                     "not_finished": sum(1 for r in rows if r.status not in TERMINAL),
                     "missing": len(ids) - len(rows),
                     "queue_wait_s": _spread(waits), "run_s": _spread(runs),
                     "errors": sorted({r.error[:300] for r in rows if r.error})[:5]}
    return out


# --- reporting -----------------------------------------------------------------------------------


def _machine() -> dict:
    versions = {}
    for package in ("django", "djangorestframework", "celery", "gunicorn", "locust",
                    "tensorflow-cpu", "tensorflow", "psycopg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(), "libraries": versions}


def _fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_markdown(result: dict) -> str:
    """The figures of a results file as Markdown: run, checks, latency per endpoint, jobs."""
    cfg, load = result["config"], result["load_average"]
    uploads, errors, jobs = result["uploads"], result["errors"], result["jobs"]
    agg = result["requests"]["aggregated"] or {}
    lines = [
        f"Run of {result['finished_at']} on `{result['machine']['host']}` "
        f"({result['machine']['cores']} cores, {result['machine']['cpu']}): "
        f"{cfg['users']} users for {cfg['seconds']:.0f} s, gunicorn {cfg['web']['workers']} workers x "
        f"{cfg['web']['threads']} threads, one Celery worker (concurrency "
        f"{cfg['worker']['concurrency']}), {cfg['database']} database, {cfg['broker']}.",
        "",
        f"Load average (1 min) before the run {load['start'][0]}, during it mean "
        f"{load['during_mean_1min']:.2f} and max {load['during_max_1min']:.2f}, after it "
        f"{load['end'][0]}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| check | result |",
        "|---|---|",
        f"| lost uploads | **{uploads['lost']}** of {uploads['accepted_total']:,} accepted "
        f"({uploads['accepted']['prediction']:,} images classified, {uploads['accepted']['dataset']:,} "
        f"datasets, {uploads['accepted']['inference_input']:,} batch inputs) |",
        f"| server errors (status ≥ 500) | **{errors['server_errors']}** "
        f"(gunicorn access log: {errors['access_log']['5xx']} of {errors['access_log']['requests']:,}) |",
        f"| connection errors and timeouts | **{errors['connection_errors']}** |",
        f"| other unexpected answers (4xx) | {errors['client_errors']} |",
        f"| launched jobs not finished (waiting up to {jobs['grace_s']:.0f} s after the run) | "
        f"**{jobs['training']['not_finished'] + jobs['inference']['not_finished']}** "
        f"(waited {jobs['waited_s']:.0f} s) |",
        f"| all checks | **{'passed' if result['passed'] else 'FAILED'}**"
        + ("" if result["passed"] else
           f" ({', '.join(name for name, ok in result['checks'].items() if not ok)})") + " |",
        "",
        f"{agg.get('requests', 0):,} requests, {_fmt(agg.get('requests_per_s'), 1)} requests/s. "
        "Latency in milliseconds as Locust reports it (client side, percentiles rounded to "
        "Locust's buckets):",
        "",
        "| method | endpoint | requests | failures | p50 | p90 | p95 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(result["requests"]["endpoints"], key=lambda r: -r["requests"])
    for r in [*rows, {**agg, "method": "", "name": "**all**"}] if agg else rows:
        lines.append(f"| {r['method']} | {r['name']} | {r['requests']:,} | {r['failures']} | "
                     f"{_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | {_fmt(r['p95_ms'])} | "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} |")
    lines += ["", "| jobs | launched | succeeded | failed | cancelled | not finished | "
              "queue wait p50 / max (s) | run time p50 / max (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("training", "inference"):
        j = jobs[kind]
        lines.append(
            f"| {kind} | {j['launched']} | {j['by_status'].get('succeeded', 0)} | "
            f"{j['by_status'].get('failed', 0)} | {j['by_status'].get('cancelled', 0)} | "
            f"{j['not_finished'] + j['missing']} | {_fmt(j['queue_wait_s'].get('p50'), 1)} / "
            f"{_fmt(j['queue_wait_s'].get('max'), 1)} | {_fmt(j['run_s'].get('p50'), 1)} / "
            f"{_fmt(j['run_s'].get('max'), 1)} |")
    return "\n".join(lines) + "\n"


def update_doc(result: dict, doc: Path = DOC) -> None:
    """Replace the generated section of the load document with ``result``'s tables."""
    text = doc.read_text()
    start, end = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    doc.write_text(text[:start] + "\n" + render_markdown(result) + text[end:])


def _summary(result: dict) -> str:
    uploads, errors, jobs = result["uploads"], result["errors"], result["jobs"]
    agg = result["requests"]["aggregated"] or {}
    lines = [f"   {agg.get('requests', 0):,} requests ({_fmt(agg.get('requests_per_s'), 1)}/s), "
             f"p50 {_fmt(agg.get('p50_ms'))} ms, p95 {_fmt(agg.get('p95_ms'))} ms, "
             f"p99 {_fmt(agg.get('p99_ms'))} ms, max {_fmt(agg.get('max_ms'))} ms",
             f"   uploads: {uploads['accepted_total']:,} accepted, {uploads['verified']:,} verified, "
             f"{uploads['lost']} lost",
             f"   server errors {errors['server_errors']}, connection errors "
             f"{errors['connection_errors']}, other unexpected answers {errors['client_errors']}, "
             f"client exceptions {errors['client_exceptions']}",
             f"   jobs: training {jobs['training']['by_status']}, inference "
             f"{jobs['inference']['by_status']}"]
    for name, ok in result["checks"].items():
        lines.append(f"   {'ok  ' if ok else 'FAIL'} {name}")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str, var: Path) -> dict:
    """Set up a platform in ``var``, load it, verify; returns the result."""
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    (var / "records").mkdir(parents=True, exist_ok=True)
    env = _environment(var)
    os.environ.clear()
    os.environ.update(env)
    load_start = _load()
    print(f"   platform folder {var}; load average {load_start}", flush=True)

    from medplatform.launcher import _stop

    manage = [sys.executable, str(ROOT / "manage.py")]
    started = time.monotonic()
    processes: dict[str, subprocess.Popen] = {}
    redis = None
    run_id = uuid.uuid4().hex[:8]
    try:
        # The static files are only needed by pages, not by the API: collected during the set-up.
        if not args.skip_collectstatic:
            processes["collectstatic"] = _spawn([*manage, "collectstatic", "--noinput", "-v", "0"],
                                                var / "collectstatic.log", env)
        with open(var / "migrate.log", "wb") as log:
            if subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"migrate failed: {(var / 'migrate.log').read_text()[-2000:]}")

        import django

        django.setup()
        from django.db import connection

        from medplatform.env import embedded_redis_socket, uses_embedded_redis
        from medplatform.launcher import _use_wal_journal

        _use_wal_journal()
        if uses_embedded_redis():
            from medplatform.embedded_redis import EmbeddedRedis

            redis = EmbeddedRedis(embedded_redis_socket(var)).start()
        port = _free_port()
        processes["worker"] = _spawn([
            sys.executable, "-m", "celery", "-A", "medplatform", "worker", "--beat",
            "--queues", "default,training,inference", "--concurrency", str(args.worker_concurrency),
            "--loglevel", "INFO", "--schedule", str(var / "celerybeat-schedule"),
            "--hostname", f"load-{run_id}@%h"], var / "worker.log", env)
        processes["web"] = _spawn([
            sys.executable, "-m", "gunicorn", "medplatform.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", str(args.web_workers),
            "--threads", str(args.web_threads), "--timeout", "300",
            "--access-logfile", str(var / "gunicorn-access.log"),
            "--access-logformat", '%(t)s "%(r)s" %(s)s %(b)s %(M)sms',
            "--keep-alive", str(args.keep_alive)],
            var / "web.log", env)
        catalog = _seed_catalog(run_id, args.users)  # while the servers start
        seed_job = _queue_seed_job(catalog["owner"], catalog["dataset"])
        _wait_for_web(port, processes)
        model = _seed_model(seed_job)
        seed_job.refresh_from_db()
        print(f"   servers up; seed model #{model.pk} ({model.architecture}, {model.num_params:,} "
              f"parameters) trained by the worker in {seed_job.duration_seconds:.0f} s", flush=True)
        from rest_framework.authtoken.models import Token

        token = Token.objects.get_or_create(user=catalog["owner"])[0].key
        warm = _warm_up(port, token, model.pk)
        if any(status != 201 for status in warm):
            raise RuntimeError(f"warm-up classifications answered {warm}")
        if "collectstatic" in processes and processes.pop("collectstatic").wait() != 0:
            raise RuntimeError(f"collectstatic failed: {(var / 'collectstatic.log').read_text()[-2000:]}")
        print(f"   set up in {time.monotonic() - started:.0f} s", flush=True)

        setup = {"accounts": catalog["accounts"], "model_id": model.pk,
                 "dataset": {"id": catalog["dataset"].pk, "size": DATASET["size"],
                             "channels": DATASET["channels"],
                             "num_classes": len(DATASET["class_names"])},
                 "training_preset": TRAINING["preset"], "training_config": TRAINING["config"],
                 "training_interval_s": args.training_interval,
                 "inference_interval_s": args.inference_interval,
                 "launch_weight": args.launch_weight, "wait_min_s": 0.5, "wait_max_s": 2.0}
        (var / "load-setup.json").write_text(json.dumps(setup))
        env.update({"LOAD_SETUP": str(var / "load-setup.json"), "LOAD_RECORDS_DIR": str(var / "records")})
        print(f"   running {args.users} users for {seconds:.0f} s against http://127.0.0.1:{port}/",
              flush=True)
        locust = _run_locust(args, seconds, port, env, var, processes)
        records = _read_records(var / "records")
        waited = _wait_for_jobs(records, args.grace)
        jobs = _jobs(records, waited, args.grace)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        _stop(processes)
        if redis:
            redis.stop()

    uploads = _verify_uploads(records, run_id)
    stats = _locust_stats(var / "records")
    errors = _errors(records, stats, var)
    samples = locust["load_samples"]
    during = [s[0] for s in samples[1:]] or [samples[0][0]]
    result = {
        "check": "load", "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
        "machine": _machine(),
        "config": {"users": args.users, "spawn_rate": args.spawn_rate, "seconds": seconds,
                   "wait_s": [setup["wait_min_s"], setup["wait_max_s"]],
                   "web": {"server": "gunicorn", "workers": args.web_workers, "threads": args.web_threads,
                           "keep_alive_s": args.keep_alive},
                   "worker": {"concurrency": args.worker_concurrency,
                              "queues": ["default", "training", "inference"], "beat": True},
                   "database": connection.vendor,
                   "broker": "embedded Redis" if redis else "Redis at REDIS_URL",
                   "training": {**TRAINING, "interval_s": args.training_interval},
                   "inference_interval_s": args.inference_interval,
                   "dataset": {**{k: v for k, v in DATASET.items() if k != "counts"},
                               "split_counts": {s: sum(c) for s, c in DATASET["counts"].items()}},
                   "model": {"id": model.pk, "architecture": model.architecture,
                             "params": model.num_params,
                             "seed_job_seconds": seed_job.duration_seconds},
                   "locust": locust["command"].replace(str(var), "$VAR")},
        "load_average": {"start": load_start, "end": _load(), "samples": samples,
                         "during_mean_1min": float(np.mean(during)),
                         "during_max_1min": float(np.max(during))},
        "locust_exit_code": locust["exit_code"], "run_seconds": round(locust["seconds"], 1),
        "requests": {"endpoints": stats["endpoints"], "aggregated": stats["aggregated"]},
        "uploads": uploads, "errors": errors, "jobs": jobs,
    }
    result["checks"] = {
        "no lost uploads": uploads["lost"] == 0 and uploads["accepted_total"] > 0,
        "no server errors": errors["server_errors"] == 0,
        "no connection errors": errors["connection_errors"] == 0,
        "no errors in the load client": errors["client_exceptions"] == 0,
        "every launched job finished": (jobs["training"]["not_finished"] + jobs["inference"]["not_finished"]
                                        + jobs["training"]["missing"] + jobs["inference"]["missing"]) == 0,
    }
    result["passed"] = all(result["checks"].values())
    return result


def _redacted(url: str) -> str:
    """A database or broker address without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.render or args.update_doc:
        result = json.loads(args.out.read_text())
        if args.update_doc:
            update_doc(result)
            print(f"updated {DOC.relative_to(ROOT)}")
        else:
            print(render_markdown(result), end="")
        return 0

    command = ".venv/bin/python -m reliability.load " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    for key in ("REDIS_URL", "DATABASE_URL"):
        if os.environ.get(key, "").strip():
            command = f"{key}={_redacted(os.environ[key].strip())} {command}"

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"== load: {args.users} users ==", flush=True)
    var = (args.var_dir or Path(tempfile.mkdtemp(prefix="medplatform-load-"))).resolve()
    var.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, command, var)
    except KeyboardInterrupt:
        print("\nInterrupted; every process started was stopped.", flush=True)
        if args.var_dir is None:
            shutil.rmtree(var, ignore_errors=True)
        return 130
    except RuntimeError as exc:
        print(f"   the load check could not run: {exc}\n   logs kept in {var}", flush=True)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    print(_summary(result), flush=True)
    print(f"   wrote {args.out}", flush=True)
    if result["passed"] and args.var_dir is None:
        shutil.rmtree(var, ignore_errors=True)
    elif not result["passed"]:
        print(f"   logs and records kept in {var}", flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
