"""SIGKILL training workers at random moments and check that no job is lost or trained twice.

    .venv/bin/python -m reliability.kill_workers --rounds 10

Sets up a private platform: a temporary var folder, a database of its own (a fresh database on
the PostgreSQL server of ``DATABASE_URL`` when that is set, else a temporary SQLite file) and a
private ``redis-server``. It queues small training jobs (``smoke`` preset, a few one-second
epochs), runs real ``celery worker --beat`` processes, and ``--rounds`` times waits for a job to be
training, waits a random moment more, and SIGKILLs the worker process group holding it (or a
random one), starting a replacement each time. Then it waits for every job to end and checks:

- every job ended in a terminal state and none is missing (none lost);
- each succeeded job has exactly one model, no other job has one, no model lacks its job, and
  every stored artifact belongs to a model (nothing half-written);
- at most one worker trained a job at a time: from the workers' logs, no run completed an epoch
  after another run had claimed the job (see ``reliability/_runs.py``).

Figures go to ``reliability/results/kill_workers.json``; the exit status is 1 when a check fails.
Everything it started is stopped and its database dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from reliability import _procs, _runs

RESULTS = Path(__file__).resolve().parent / "results" / "kill_workers.json"
# 144 training images: an epoch of the smoke preset takes about a second on a CPU core.
JOB_COUNTS = {"train": [48, 48, 48], "val": [4, 4, 4], "test": [4, 4, 4]}


def _say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


class PrivateDatabase:
    """A database of this run's own: a fresh one on ``DATABASE_URL``'s server, or SQLite."""

    def __init__(self, folder: Path, server_url: str | None):
        self.server_url = server_url
        self.name = ""
        if server_url:
            import environ

            config = environ.Env.db_url_config(server_url)
            if config["ENGINE"] != "django.db.backends.postgresql":
                raise SystemExit(f"only PostgreSQL or SQLite are supported, not {config['ENGINE']}")
            self.config = config
            self.name = f"medplatform_kill_{uuid.uuid4().hex[:10]}"
            self.url = server_url.rsplit("/", 1)[0] + f"/{self.name}"
        else:
            self.url = f"sqlite:///{folder / 'db.sqlite3'}"

    @property
    def vendor(self) -> str:
        return "postgresql" if self.server_url else "sqlite"

    def _admin(self):
        import psycopg

        c = self.config
        return psycopg.connect(host=c["HOST"] or "127.0.0.1", port=int(c["PORT"] or 5432),
                               user=c["USER"], password=c["PASSWORD"] or None, dbname=c["NAME"],
                               autocommit=True)

    def create(self) -> None:
        if self.server_url:
            with self._admin() as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        if self.server_url:
            with self._admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Platform:
    """The private platform: environment, database, broker, workers."""

    def __init__(self, folder: Path, args):
        self.folder = folder
        self.args = args
        self.database = PrivateDatabase(folder, os.environ.get("DATABASE_URL") or None)
        self.redis = _procs.RedisServer(folder / "redis")
        self.workers: list[_procs.PlatformProcess] = []  # every worker started, dead ones too
        self.media = folder / "media"
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.redis.start()
        self.database.create()
        self.env = _procs.platform_env(
            database_url=self.database.url, broker_url=self.redis.url, var_dir=self.folder / "var",
            work_dir=self.folder / "work", media_root=self.media,
            JOB_HEARTBEAT_TIMEOUT=str(self.args.heartbeat_timeout))
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:  # as the launcher does: readers never wait
                cursor.execute("PRAGMA journal_mode=WAL")

    def start_worker(self) -> _procs.PlatformProcess:
        worker = _procs.start_worker(self.folder / "workers", name=f"w{len(self.workers) + 1}",
                                     env=self.env, heartbeat_timeout=self.args.heartbeat_timeout,
                                     sweep_interval=1)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[_procs.PlatformProcess]:
        return [worker for worker in self.workers if worker.is_alive()]

    def stop(self) -> None:
        for worker in self.live_workers():
            worker.kill()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        self.redis.kill()
        with contextlib.suppress(Exception):
            self.database.drop()


def _make_jobs(owner, dataset, count: int, epochs: int) -> list[int]:
    from training import services

    return [services.training_job_create(
        owner=owner, dataset=dataset, preset="smoke", name=f"kill test {index + 1}",
        config={"epochs": epochs, "batch_size": 16})[0].pk for index in range(count)]


def _holder(platform: Platform, job) -> _procs.PlatformProcess | None:
    return next((w for w in platform.live_workers() if w.owns(job.worker_pid)), None)


def _training_now(platform: Platform):
    """Running jobs with the live worker that holds each."""
    from training.models import TrainingJob

    found = []
    for job in TrainingJob.objects.filter(status="running"):
        holder = _holder(platform, job)
        if holder is not None:
            found.append((job, holder))
    return found


def _pick_victim(platform: Platform, rng: random.Random, args, owner, dataset, job_ids: list[int],
                 round_number: int):
    """Wait for a random moment of some job's training; return that job and its worker.

    A job being trained is chosen at random, then a random epoch of it; once the job is in that
    epoch, a random moment of about an epoch more passes. Kills so land at the start, in the middle
    and at the end of runs, before and after checkpoints. When the job ends or changes hands
    first, the worker holding any job, or a random worker, is taken.
    """
    from training.models import TrainingJob

    deadline = time.monotonic() + args.round_timeout
    while not (training := _training_now(platform)):
        if not platform.live_workers():
            raise RuntimeError("every worker exited")
        if not TrainingJob.objects.filter(pk__in=job_ids, status__in=("queued", "running")).exists():
            job_ids.extend(_make_jobs(owner, dataset, args.workers, args.epochs))
            _say(f"all jobs had ended: queued {args.workers} more")
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {round_number}: no job started training within "
                               f"{args.round_timeout} s")
        time.sleep(0.2)
    job, holder = rng.choice(training)
    target_epoch = rng.randrange(job.total_epochs or 1)
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status != "running" or not holder.owns(job.worker_pid):
            break
        if job.current_epoch >= target_epoch:
            time.sleep(rng.uniform(0, args.max_delay))
            break
        time.sleep(0.1)
    training = _training_now(platform)
    for candidate, worker in training:
        if candidate.pk == job.pk:
            return candidate, worker
    if training:
        return rng.choice(training)
    return None, rng.choice(platform.live_workers())


def _progress_line(job_ids: list[int]) -> str:
    from training.models import TrainingJob

    rows = TrainingJob.objects.filter(pk__in=job_ids)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    done = sum(counts.get(status, 0) for status in ("succeeded", "failed", "cancelled"))
    width = 24
    filled = round(width * done / max(len(job_ids), 1))
    shown = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{len(job_ids)} jobs ended ({shown})"


def run(args) -> dict:
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="medplatform-kill-workers-"))
    platform = Platform(folder, args)
    started = time.monotonic()
    kills: list[dict] = []
    try:
        platform.start()
        from django.contrib.auth import get_user_model

        from classifier import services as catalog_services

        owner = get_user_model().objects.create_user("kill-test", password=uuid.uuid4().hex)
        dataset = catalog_services.dataset_import(
            source=io.BytesIO(_procs.tiny_dataset_npz(JOB_COUNTS)), filename="kill-test.npz",
            owner=owner, name="Kill test", class_names=["a", "b", "c"])
        _say(f"private platform in {folder} ({platform.database.vendor}, redis on port "
             f"{platform.redis.port}); queuing {args.jobs} jobs of {args.epochs} epochs")
        job_ids = _make_jobs(owner, dataset, args.jobs, args.epochs)
        for _ in range(args.workers):
            platform.start_worker()

        for round_number in range(1, args.rounds + 1):
            job, victim = _pick_victim(platform, rng, args, owner, dataset, job_ids, round_number)
            killed_at = time.time()
            victim.kill()
            kill = {"round": round_number, "worker": victim.name, "at": killed_at,
                    "job": job.pk if job else None, "job_status": job.status if job else None,
                    "epoch": job.current_epoch if job else None,
                    "batch_progress": round(job.batch_progress, 2) if job else None}
            kills.append(kill)
            replacement = platform.start_worker()
            if job is None:
                where = "idle"
            elif job.current_epoch >= job.total_epochs:
                where = f"job {job.pk} after its last epoch: evaluating or registering"
            else:
                where = f"job {job.pk} in epoch {job.current_epoch + 1} of {job.total_epochs}"
            _say(f"kill {round_number}/{args.rounds}: SIGKILL {victim.name} ({where}); "
                 f"started {replacement.name}. {_progress_line(job_ids)}")

        _say("all kills done; waiting for every job to end")
        from training.models import TERMINAL_STATUSES, TrainingJob

        deadline = time.monotonic() + args.finish_timeout
        last_line = ""
        while TrainingJob.objects.filter(pk__in=job_ids).exclude(status__in=TERMINAL_STATUSES
                                                                 ).exists():
            if time.monotonic() > deadline:
                _say(f"gave up waiting after {args.finish_timeout} s")
                break
            line = _progress_line(job_ids)
            if line != last_line:
                _say(line)
                last_line = line
            time.sleep(1)
        _say(_progress_line(job_ids))
        for worker in platform.live_workers():
            worker.kill()
        return _figures(platform, job_ids, kills, args, time.monotonic() - started)
    finally:
        platform.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            _say(f"kept {folder}")


def _figures(platform: Platform, job_ids: list[int], kills: list[dict], args,
             seconds: float) -> dict:
    from classifier.models import ModelVersion
    from training.models import TERMINAL_STATUSES, TrainingJob

    jobs = list(TrainingJob.objects.filter(pk__in=job_ids))
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job.status] = by_status.get(job.status, 0) + 1
    succeeded = [job for job in jobs if job.status == "succeeded"]
    models = list(ModelVersion.objects.all())
    models_per_job = {job.pk: ModelVersion.objects.filter(training_job=job).count() for job in jobs}
    stored = {str(path.relative_to(platform.media)) for path in (platform.media / "models").glob("*")}
    referenced = {model.artifact.name for model in models}

    runs = _runs.runs_from_logs({worker.name: worker.log() for worker in platform.workers})
    overlaps = [problem for job_runs in runs.values() for problem in _runs.overlapping_epochs(job_runs)]
    concurrency = {job_id: _runs.max_concurrent_runs(job_runs) for job_id, job_runs in runs.items()}
    resumed_after = []
    for kill in kills:
        job_runs = runs.get(kill["job"] or -1, [])
        later = [run.start for run in job_runs if run.start > kill["at"]]
        if later and kill["job_status"] == "running":
            resumed_after.append(round(min(later) - kill["at"], 1))
    epochs_trained = sum(len(run.epochs) for job_runs in runs.values() for run in job_runs)

    checks = {
        "every_job_terminal": all(job.status in TERMINAL_STATUSES for job in jobs),
        "no_job_lost": len(jobs) == len(job_ids)
        and all(job.status in TERMINAL_STATUSES for job in jobs),
        "one_model_per_succeeded_job": all(models_per_job[job.pk] == 1 and job.model_version_id
                                           for job in succeeded),
        "no_model_for_other_jobs": all(models_per_job[job.pk] == 0 for job in jobs
                                       if job.status != "succeeded"),
        "no_model_without_job": len(models) == len(succeeded),
        "no_orphan_artifact": stored == referenced,
        "one_trainer_at_a_time": not overlaps and max(concurrency.values(), default=0) <= 1,
    }
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m reliability.kill_workers " + " ".join(sys.argv[1:]),
        "database": platform.database.vendor,
        "settings": {"rounds": args.rounds, "workers": args.workers, "epochs": args.epochs,
                     "heartbeat_timeout_s": args.heartbeat_timeout, "max_delay_s": args.max_delay,
                     "seed": args.seed},
        "kills": len(kills),
        "kills_mid_training": sum(1 for kill in kills if kill["job_status"] == "running"),
        "kills_by_moment": _kill_moments(kills, args.epochs),
        "workers_started": len(platform.workers),
        "jobs": len(job_ids),
        "jobs_by_status": by_status,
        "jobs_lost": len(job_ids) - sum(by_status.get(s, 0) for s in TERMINAL_STATUSES),
        "model_versions": len(models),
        "jobs_with_more_than_one_model": sum(1 for n in models_per_job.values() if n > 1),
        "orphan_artifacts": len(stored - referenced),
        "runs": sum(len(job_runs) for job_runs in runs.values()),
        "claims_recorded_by_jobs": sum(job.deliveries for job in jobs),
        "epochs_trained": epochs_trained,
        "epochs_needed": sum(job.total_epochs for job in succeeded),
        "max_concurrent_trainers_per_job": max(concurrency.values(), default=0),
        "epochs_completed_after_takeover": len(overlaps),
        "seconds_from_kill_to_takeover": resumed_after,
        "failures": {job.pk: job.error for job in jobs if job.status == "failed"},
        "kill_log": kills,
        "overlaps": overlaps,
        "checks": checks,
        "passed": all(checks.values()),
        "seconds": round(seconds, 1),
    }


def _kill_moments(kills: list[dict], epochs: int) -> dict[str, int]:
    """How many kills fell in the first epoch, a later one, after the last one, or when idle."""
    moments = {"first epoch": 0, "later epoch": 0, "after the last epoch": 0, "no job": 0}
    for kill in kills:
        if kill["job_status"] != "running":
            moments["no job"] += 1
        elif kill["epoch"] == 0:
            moments["first epoch"] += 1
        elif kill["epoch"] < epochs:
            moments["later epoch"] += 1
        else:
            moments["after the last epoch"] += 1
    return moments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="SIGKILLs to deliver (default 10)")
    parser.add_argument("--jobs", type=int, default=6, help="training jobs queued at the start")
    parser.add_argument("--workers", type=int, default=2, help="workers running at once")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per job")
    parser.add_argument("--heartbeat-timeout", type=int, default=6,
                        help="seconds of silence before a job is taken over")
    parser.add_argument("--max-delay", type=float, default=0.6,
                        help="longest random wait, once the chosen epoch has begun, before a kill "
                             "(about an epoch)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--round-timeout", type=float, default=180)
    parser.add_argument("--finish-timeout", type=float, default=600)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)

    figures = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    for name in ("kills", "kills_mid_training", "kills_by_moment", "jobs", "jobs_by_status", "jobs_lost",
                 "model_versions", "jobs_with_more_than_one_model", "orphan_artifacts",
                 "runs", "epochs_trained", "epochs_needed", "max_concurrent_trainers_per_job",
                 "epochs_completed_after_takeover", "seconds_from_kill_to_takeover", "seconds"):
        print(f"  {name:34} {figures[name]}")
    for check, ok in figures["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    for problem in figures["overlaps"]:
        print(f"  overlap: {problem}")
    print(f"\nwritten to {args.output}")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
