"""Who trained which job, and when: training runs read back from the workers' own logs.

Each worker run of a training job logs, tagged ``job <id> run <token>``, when it claimed the job
and every epoch it completed, whether or not the database recorded that epoch (see
``training.services._JobHooks``). Reading the logs of every worker, killed ones included, gives
each job's runs on one clock, from which two things are checked:

- no run completed an epoch after a later run of the same job had claimed it (a worker that was
  taken over while still alive would keep training next to its successor);
- the largest number of runs of one job active at the same moment, a run being active from its
  claim to its last completed epoch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

# Celery's worker log format: "[2026-01-02 03:04:05,678: INFO/ForkPoolWorker-1] message".
_LINE = re.compile(
    r"^\[(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] "
    r"job (?P<job>\d+) run (?P<run>[0-9a-f]{8}): (?P<message>.*)$")
_EPOCH = re.compile(r"^epoch (?P<epoch>\d+)/(?P<total>\d+)")


@dataclass
class Run:
    """One worker's hold on one job: from its claim to the last epoch it completed."""

    job_id: int
    token: str
    worker: str
    claimed_at: float | None = None
    first_seen: float = 0.0
    epochs: list[tuple[float, int]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.claimed_at if self.claimed_at is not None else self.first_seen

    @property
    def end(self) -> float:
        return max([self.start] + [at for at, _ in self.epochs])


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def runs_from_logs(logs: dict[str, str]) -> dict[int, list[Run]]:
    """``{job id: [runs, in order of start]}`` from ``{worker name: log text}``."""
    runs: dict[tuple[int, str], Run] = {}
    for worker, text in logs.items():
        for line in text.splitlines():
            match = _LINE.match(line.strip())
            if not match:
                continue
            at = _seconds(match["stamp"])
            key = (int(match["job"]), match["run"])
            run = runs.get(key)
            if run is None:
                run = runs[key] = Run(job_id=key[0], token=key[1], worker=worker, first_seen=at)
            message = match["message"]
            if message.startswith(("claimed", "took the job over")):
                run.claimed_at = at
            elif epoch := _EPOCH.match(message):
                run.epochs.append((at, int(epoch["epoch"])))
    by_job: dict[int, list[Run]] = {}
    for run in runs.values():
        by_job.setdefault(run.job_id, []).append(run)
    for job_runs in by_job.values():
        job_runs.sort(key=lambda run: run.start)
    return by_job


def overlapping_epochs(job_runs: list[Run]) -> list[str]:
    """Epochs a run completed after a later run of the same job had claimed it."""
    problems = []
    for index, run in enumerate(job_runs):
        for later in job_runs[index + 1:]:
            for at, epoch in run.epochs:
                if at > later.start:
                    problems.append(
                        f"job {run.job_id}: run {run.token} ({run.worker}) completed epoch {epoch} "
                        f"{at - later.start:.3f} s after run {later.token} ({later.worker}) claimed it")
    return problems


def max_concurrent_runs(job_runs: list[Run]) -> int:
    """The most runs of one job active at one moment (0 for a job nobody ran)."""
    events = sorted([(run.start, 1) for run in job_runs] + [(run.end, -1) for run in job_runs],
                    key=lambda event: (event[0], event[1]))  # an end before a start at a tie
    active = peak = 0
    for _, change in events:
        active += change
        peak = max(peak, active)
    return peak
