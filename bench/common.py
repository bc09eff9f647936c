"""Shared helpers: locating the real data, writing results, the summary page."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def data_dir() -> Path:
    return Path(os.environ.get("MEDMNIST_DIR", ROOT.parent / "shared" / "data"))


def load_medmnist(flag: str):
    """The official file through the platform's own loader (class names from medmnist)."""
    from medml import dataset_io

    path = data_dir() / f"{flag}.npz"
    if not path.exists():
        raise SystemExit(f"{path} not found: set MEDMNIST_DIR to a folder with {flag}.npz")
    info = dataset_io.medmnist_info(flag)
    return dataset_io.load_medmnist_npz(path, class_names=info["class_names"] if info else None)


def cpu_probe_ms() -> float:
    """Milliseconds one core takes for a fixed pure-Python loop (best of 5), written beside each
    result: this machine's speed varies between days, and results of different days compare
    only in its light."""
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        sum(i * i for i in range(200_000))
        best = min(best, time.perf_counter() - began)
    return round(1000 * best, 2)


def machine() -> dict:
    from medml.runtime import library_versions

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_probe_ms": cpu_probe_ms(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def write_result(name: str, result: dict, command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "n": len(arr), "values": [float(v) for v in arr]}
