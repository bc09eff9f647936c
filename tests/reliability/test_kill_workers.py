"""Workers SIGKILLed at random moments of training (``reliability/kill_workers.py``).

The trace analysis is checked on made-up logs, including ones where two workers trained the
same job at once, so that it is known to catch that; then the script itself runs a short round
of kills against real processes. The full measurement (10 kills) is
``.venv/bin/python -m reliability.kill_workers --rounds 10``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from medml import dataset_io
from reliability import _procs, _runs
from tests.factories import ModelVersionFactory
from training import services


def line(stamp: str, job: int, run: str, message: str, worker: str = "ForkPoolWorker-1") -> str:
    return f"[2026-01-02 03:04:{stamp}: INFO/{worker}] job {job} run {run}: {message}"


def epoch(n: int, of: int = 4) -> str:
    return f"epoch {n}/{of}: loss 0.5000, accuracy 0.5000"


HANDOVER = {
    # w1 claims job 7, completes two epochs and is killed; w2 takes over and finishes.
    "w1": "\n".join([
        line("00,000", 7, "aaaaaaaa", "claimed the queued job"),
        "[2026-01-02 03:04:00,500: INFO/MainProcess] Task training.tasks.run_training_job received",
        line("01,000", 7, "aaaaaaaa", epoch(1)),
        line("02,000", 7, "aaaaaaaa", epoch(2)),
    ]),
    "w2": "\n".join([
        line("09,000", 7, "bbbbbbbb", "took the job over from a silent worker"),
        line("10,000", 7, "bbbbbbbb", "resuming after epoch 2"),
        line("11,000", 7, "bbbbbbbb", epoch(3)),
        line("12,000", 7, "bbbbbbbb", epoch(4)),
        line("05,000", 8, "cccccccc", "claimed the queued job"),
        line("06,000", 8, "cccccccc", epoch(1, of=1)),
    ]),
}


def test_a_clean_handover_shows_one_trainer_at_a_time():
    runs = _runs.runs_from_logs(HANDOVER)
    assert sorted(runs) == [7, 8]
    first, second = runs[7]
    assert (first.token, first.worker, second.token, second.worker) == (
        "aaaaaaaa", "w1", "bbbbbbbb", "w2")
    assert [n for _, n in first.epochs] == [1, 2] and [n for _, n in second.epochs] == [3, 4]
    assert _runs.overlapping_epochs(runs[7]) == []
    assert _runs.max_concurrent_runs(runs[7]) == 1
    assert _runs.max_concurrent_runs(runs[8]) == 1


def test_a_worker_that_kept_training_after_a_takeover_is_caught():
    logs = dict(HANDOVER)
    # w1 was only slow, not dead: it completes epoch 3 after w2 took the job over.
    logs["w1"] += "\n" + line("10,500", 7, "aaaaaaaa", epoch(3))
    runs = _runs.runs_from_logs(logs)
    problems = _runs.overlapping_epochs(runs[7])
    assert len(problems) == 1
    assert "run aaaaaaaa (w1) completed epoch 3 1.500 s after run bbbbbbbb (w2)" in problems[0]
    assert _runs.max_concurrent_runs(runs[7]) == 2


@pytest.mark.parametrize("model_file", ["best.keras", "ensemble.keras"])
def test_a_takeover_deletes_the_artifact_a_killed_run_stored_but_never_registered(
        db, settings, model_file):
    """A run killed between storing its artifact and committing leaves the file; the next run
    of the job, which holds the same model (its best checkpoint, or an ensemble's averaged
    model), removes it (and nothing registered)."""
    best = services.job_workdir(41) / model_file
    best.parent.mkdir(parents=True)
    best.write_bytes(b"the best checkpoint of job 41")
    prefix = dataset_io.sha256_of(best)[:16]
    registered = default_storage.save(f"models/{prefix}.keras", ContentFile(best.read_bytes()))
    ModelVersionFactory(artifact=registered)
    leftover = default_storage.save(f"models/{prefix}.keras", ContentFile(best.read_bytes()))
    unrelated = default_storage.save("models/0123456789abcdef.keras", ContentFile(b"other"))
    assert leftover != registered

    services._remove_unregistered_artifacts(41)

    assert default_storage.exists(registered) and default_storage.exists(unrelated)
    assert not default_storage.exists(leftover)


@pytest.mark.slow
def test_the_kill_script_loses_nothing_and_trains_each_job_once(tmp_path):
    output = tmp_path / "kill_workers.json"
    env = {key: value for key, value in os.environ.items()
           if key not in ("DJANGO_SETTINGS_MODULE", "MEDPLATFORM_VAR_DIR")}
    result = subprocess.run(
        [sys.executable, "-m", "reliability.kill_workers", "--rounds", "2", "--jobs", "2",
         "--epochs", "3", "--output", str(output)],
        cwd=_procs.BASE_DIR, env=env, capture_output=True, text=True, timeout=420)
    assert output.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["kills"] == 2
    assert figures["database"] == ("postgresql" if os.environ.get("DATABASE_URL") else "sqlite")
    assert figures["jobs_lost"] == 0
    assert figures["jobs_with_more_than_one_model"] == 0
    assert figures["max_concurrent_trainers_per_job"] == 1
    assert figures["passed"], json.dumps(figures["checks"]) + result.stdout[-3000:]
    assert result.returncode == 0
