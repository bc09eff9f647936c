"""Serving: the prediction API and batch inference against bare baselines, side by side.

Everything runs in a private platform folder (SQLite, the embedded Redis, BloodMNIST imported
from ``MEDMNIST_DIR``) with a compact CNN trained for one epoch through ``manage.py train``:

1. Single-image API: the platform under gunicorn (2 workers x 1 thread, ``DEBUG=0``) takes
   ``POST /api/v1/predictions/`` with one 28x28 BloodMNIST test PNG and ``gradcam=false`` from
   concurrent clients; beside it, a bare DRF view (:mod:`bench.bare_app`: decode + the same
   ONNX Runtime predictor call, 1 thread as in the platform, no auth, database or storage)
   under the same gunicorn settings takes the same load. The two are measured in alternating
   rounds, so a change in the machine's load hits both.
   Reported: server time (``Server-Timing``), client latency, requests/s and their ratio.
2. Batch inference: the ONNX Runtime predictor at batch 256 over the test split (images/s,
   every core, the session batch jobs use) against the platform's batch job
   (``training.inference.inference_job_run`` on an uploaded ``.npz`` of the same images, reading
   the input and writing the CSV/JSON results and, with labels, the evaluation report).
3. Grad-CAM for one image through :mod:`medml.explain`, with and without the PNG overlay.

The work runs in a child process, so its Django settings and TensorFlow state do not mix with
other benchmarks run in the same command. Servers are started in their own process groups and
stopped, with the embedded Redis, whatever happens.
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import ROOT, data_dir

CLIENTS = 4
TARGETS = {"api_ratio": 0.8, "api_server_median_ms": 5.0, "batch_ratio": 0.8,
           "gradcam_median_ms": 50.0}
ONNX_REFERENCE_IMAGES_PER_S = 4900  # the figure the targets are phrased against
ROUND_DEADLINE_S = 240.0  # a round stops early (and says so) past this


def _settings(quick: bool) -> dict:
    if quick:
        return {"requests": 200, "rounds": 2, "warmup": 24, "gradcam_requests": 10,
                "batch_repeats": 2, "gradcam_runs": 50, "single_runs": 100}
    return {"requests": 2000, "rounds": 4, "warmup": 60, "gradcam_requests": 50,
            "batch_repeats": 5, "gradcam_runs": 50, "single_runs": 300}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {"n": len(arr), "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()),
            "min": float(arr.min()), "max": float(arr.max())}


# --- HTTP ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                 f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode() + data
                 + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _server_ms(header: str | None) -> float | None:
    if not header:
        return None
    for item in header.split(";"):
        if item.strip().startswith("dur="):
            return float(item.strip()[4:])
    return None


class Server:
    """A gunicorn process group on 127.0.0.1, 2 sync workers with one thread each."""

    def __init__(self, name: str, app: str, env: dict, log: Path):
        self.name, self.app, self.env, self.log = name, app, env, log
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    def start(self, probe_path: str, timeout: float = 180.0) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", self.app, "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "2", "--threads", "1", "--timeout", "300",
                 "--log-level", "warning", "--chdir", str(ROOT)],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited: {self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", probe_path)
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass


def _hit(port: int, path: str, requests: list[tuple[bytes, dict]], *, clients: int, total: int,
         expect: int, deadline_s: float = ROUND_DEADLINE_S) -> dict:
    """``total`` POSTs from ``clients`` threads, each on its own kept connection (reopened when
    the server closes it, as gunicorn's sync workers do after every response)."""
    counter = itertools.count()
    latencies: list[float] = []
    server: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine_lat, mine_srv, mine_err = [], [], []
        start.wait()
        while time.perf_counter() < stop_at[0]:
            i = next(counter)
            if i >= total:
                break
            body, headers = requests[i % len(requests)]
            began = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                mine_err.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - began
            if response.status != expect:
                mine_err.append(f"HTTP {response.status}: {payload[:300]!r}")
                continue
            mine_lat.append(elapsed * 1000)
            ms = _server_ms(response.getheader("Server-Timing"))
            if ms is not None:
                mine_srv.append(ms)
        conn.close()
        with lock:
            latencies.extend(mine_lat)
            server.extend(mine_srv)
            errors.extend(mine_err)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + deadline_s
    start.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": wall, "latency_ms": latencies, "server_ms": server,
            "stopped_at_deadline": len(latencies) + len(errors) < total}


def _summarise(rounds: list[dict]) -> dict:
    latency = [v for r in rounds for v in r["latency_ms"]]
    server = [v for r in rounds for v in r["server_ms"]]
    seconds = sum(r["seconds"] for r in rounds)
    done = sum(r["requests"] for r in rounds)
    return {"requests": done, "errors": sum(r["errors"] for r in rounds),
            "first_errors": [e for r in rounds for e in r["first_errors"]][:3],
            "seconds": seconds, "requests_per_s": done / seconds if seconds else 0.0,
            "server_ms": _percentiles(server), "latency_ms": _percentiles(latency),
            "rounds_requests_per_s": [r["requests"] / r["seconds"] for r in rounds],
            "stopped_at_deadline": any(r["stopped_at_deadline"] for r in rounds)}


# --- the measurement (child process) -------------------------------------------------------------


def _measure(quick: bool) -> dict:
    cfg = _settings(quick)
    load_at_start = _load()
    # Under the project's var/, where a default install keeps its database and uploads. Not in
    # /tmp: on this machine a file created there costs about 0.4 ms against 0.02 ms elsewhere on
    # the same disk, a cost the platform (which stores each upload) pays and the bare view not.
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-serving-", dir=ROOT / "var"))
    env = {**os.environ, "MEDPLATFORM_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE":
           "medplatform.settings", "MEDMNIST_DIR": str(data_dir()), "DEBUG": "0",
           "ALLOWED_HOSTS": "127.0.0.1", "API_THROTTLE_USER": "1000000/min",
           "LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "MODEL_CACHE_DIR", "STATIC_ROOT"):
        env.pop(key, None)
        os.environ.pop(key, None)
    os.environ.update({k: env[k] for k in ("MEDPLATFORM_VAR_DIR", "DJANGO_SETTINGS_MODULE",
                                          "MEDMNIST_DIR", "DEBUG", "ALLOWED_HOSTS",
                                          "API_THROTTLE_USER", "LOG_LEVEL",
                                          "TF_CPP_MIN_LOG_LEVEL")})
    manage = [sys.executable, str(ROOT / "manage.py")]
    print(f"   private folder {var}; load average {load_at_start}", flush=True)
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
    subprocess.run([*manage, "import_medmnist", "bloodmnist", "-v", "0"], env=env, check=True)

    from medplatform.embedded_redis import EmbeddedRedis
    from medplatform.env import embedded_redis_socket

    redis = EmbeddedRedis(embedded_redis_socket(var)).start()
    try:
        import django

        django.setup()
        from django.contrib.auth import get_user_model

        password = uuid.uuid4().hex
        get_user_model().objects.create_superuser("bench", "bench@example.org", password)
        started = time.perf_counter()
        subprocess.run([*manage, "train", "--dataset", "bloodmnist", "--preset", "smoke",
                        "--set", "epochs=1", "--owner", "bench"], env={**env, "TQDM_DISABLE": "1"},
                       check=True)
        train_seconds = time.perf_counter() - started

        from classifier import selectors, services, services_predict
        from classifier.models import Dataset, ModelVersion

        model_version = ModelVersion.objects.order_by("-pk").first()
        blood = Dataset.objects.get(slug="bloodmnist")
        model_path = services.model_artifact_local_path(
            model_version=model_version, cache_dir=services_predict.model_cache_dir())
        arrays = selectors.dataset_arrays(dataset=blood)
        test_images, test_labels = arrays.images("test"), arrays.labels("test")
        model_info = {"id": model_version.pk, "architecture": model_version.architecture,
                      "params": model_version.num_params, "train_command_seconds": train_seconds,
                      "test_accuracy": model_version.metrics.get("accuracy"),
                      "input": list(test_images.shape[1:]), "test_images": len(test_images)}
        print(f"   model #{model_version.pk} ({model_version.architecture}, "
              f"{model_version.num_params:,} parameters, test accuracy "
              f"{model_info['test_accuracy']:.3f}) trained in {train_seconds:.0f} s", flush=True)

        api = _api(env, var, password, model_version, blood, model_path, test_images, cfg)
        batch = _batch(model_version, model_path, test_images, test_labels, var, cfg)
        gradcam = _gradcam(model_path, test_images, cfg)
    finally:
        redis.stop()
    shutil.rmtree(var, ignore_errors=True)  # kept, with the server logs, when a step failed

    api_ratio = api["platform"]["requests_per_s"] / api["bare"]["requests_per_s"]
    server_median = api["platform"]["server_ms"]["median"]
    # The target counts reading the input, predicting and writing the results: the job on an
    # .npz without labels. With labels the job also computes the evaluation report (bootstrap
    # intervals included); that figure is reported beside it.
    batch_ratio = (batch["platform_job_unlabelled"]["images_per_s"]
                   / batch["predictor"]["images_per_s"])
    batch_ratio_with_report = (batch["platform_job"]["images_per_s"]
                               / batch["predictor"]["images_per_s"])
    gradcam_median = gradcam["heatmap_ms"]["median"]
    met = {"api_ratio": api_ratio >= TARGETS["api_ratio"],
           "api_server_median_ms": server_median <= TARGETS["api_server_median_ms"],
           "batch_ratio": batch_ratio >= TARGETS["batch_ratio"],
           "gradcam_median_ms": gradcam_median <= TARGETS["gradcam_median_ms"]}
    return {"quick": quick, "dataset": "bloodmnist", "model": model_info,
            "load_average_at_start": load_at_start, "load_average_at_end": _load(),
            "api": api, "batch": batch, "gradcam": gradcam,
            "ratios": {"api_throughput": api_ratio, "batch_throughput": batch_ratio,
                       "batch_throughput_with_report": batch_ratio_with_report,
                       "batch_platform_vs_onnx_reference":
                           batch["platform_job_unlabelled"]["images_per_s"]
                           / ONNX_REFERENCE_IMAGES_PER_S},
            "values": {"api_ratio": api_ratio, "api_server_median_ms": server_median,
                       "batch_ratio": batch_ratio, "gradcam_median_ms": gradcam_median},
            "targets": TARGETS, "met": met, "all_met": all(met.values())}


def _api(env, var, password, model_version, dataset, model_path, test_images, cfg) -> dict:
    from medml import dataset_io

    pngs = [dataset_io.image_to_png_bytes(image) for image in test_images[:64]]
    bare_env = {**env, "BENCH_BARE_MODEL": str(model_path),
                "BENCH_BARE_PREPROCESSING": json.dumps(dataset.source_preprocessing or {})}
    bare_env.pop("DJANGO_SETTINGS_MODULE", None)
    platform = Server("platform", "medplatform.wsgi:application", env, var / "gunicorn-platform.log")
    bare = Server("bare", "bench.bare_app:application", bare_env, var / "gunicorn-bare.log")
    try:
        platform.start("/healthz")
        bare.start("/predict/")
        conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=30)
        conn.request("POST", "/api/v1/auth/token/",
                     body=json.dumps({"username": "bench", "password": password}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        token = json.loads(response.read())["token"]
        conn.close()

        def bodies(gradcam: str, auth: bool) -> list[tuple[bytes, dict]]:
            out = []
            for i, png in enumerate(pngs):
                body, content_type = _multipart(
                    {"model": str(model_version.pk), "gradcam": gradcam}, f"test-{i}.png", png)
                headers = {"Content-Type": content_type}
                if auth:
                    headers["Authorization"] = f"Token {token}"
                out.append((body, headers))
            return out

        sides = {"platform": (platform.port, "/api/v1/predictions/", bodies("false", True), 201),
                 "bare": (bare.port, "/predict/", bodies("false", False), 201)}
        warm = {}
        for name, (port, path, reqs, expect) in sides.items():
            warm[name] = _hit(port, path, reqs, clients=CLIENTS, total=cfg["warmup"], expect=expect)
            if warm[name]["errors"]:
                raise RuntimeError(f"{name} warm-up failed: {warm[name]['first_errors']}")
        per_round = cfg["requests"] // cfg["rounds"]
        rounds: dict[str, list[dict]] = {"platform": [], "bare": []}
        loads = []
        for r in range(cfg["rounds"]):
            order = ["platform", "bare"] if r % 2 == 0 else ["bare", "platform"]
            for name in order:
                port, path, reqs, expect = sides[name]
                loads.append({"round": r, "side": name, "load_average": _load()})
                result = _hit(port, path, reqs, clients=CLIENTS, total=per_round, expect=expect)
                rounds[name].append(result)
                print(f"   round {r + 1}/{cfg['rounds']} {name:8s} "
                      f"{result['requests'] / result['seconds']:7.1f} req/s, server median "
                      f"{np.median(result['server_ms']) if result['server_ms'] else float('nan'):.2f}"
                      f" ms, errors {result['errors']}, load {loads[-1]['load_average'][0]}",
                      flush=True)
        # Each worker builds and traces its Grad-CAM function on its first such request.
        _hit(platform.port, "/api/v1/predictions/", bodies("true", True), clients=CLIENTS,
             total=16, expect=201)
        gradcam = _hit(platform.port, "/api/v1/predictions/", bodies("true", True), clients=1,
                       total=cfg["gradcam_requests"], expect=201)
        out = {name: _summarise(results) for name, results in rounds.items()}
        out["clients"] = CLIENTS
        out["server"] = "gunicorn, 2 sync workers x 1 thread, 127.0.0.1"
        out["warmup_requests"] = cfg["warmup"]
        out["round_loads"] = loads
        out["platform_gradcam_true"] = _summarise([gradcam]) | {"clients": 1}
        out["image_bytes_median"] = int(np.median([len(p) for p in pngs]))
        return out
    finally:
        platform.stop()
        bare.stop()


def _batch(model_version, model_path, test_images, test_labels, var, cfg) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from medml.infer import Predictor
    from training import inference
    from training.models import InferenceJob

    owner = model_version.owner
    # The raw baseline is the same ONNX Runtime session the platform's batch jobs use (every
    # core); a one-thread session is measured beside it for reference.
    predictor = Predictor.from_file(model_path, threads=0, runtime="onnxruntime")
    predictor_1 = Predictor.from_file(model_path, threads=1, runtime="onnxruntime")
    size = inference.BATCH_SIZE
    n = len(test_images)

    def raw_pass(which=predictor) -> float:
        began = time.perf_counter()
        for s in range(0, n, size):
            which.predict(test_images[s:s + size])
        return time.perf_counter() - began

    buffer = io.BytesIO()
    np.savez(buffer, images=test_images, labels=test_labels)
    npz = buffer.getvalue()
    buffer = io.BytesIO()
    np.savez(buffer, images=test_images)
    npz_unlabelled = buffer.getvalue()

    def job_pass(data: bytes = npz) -> tuple[float, float, float]:
        began = time.perf_counter()
        job = inference.inference_job_create(
            owner=owner, model_version=model_version,
            upload=SimpleUploadedFile("bloodmnist-test.npz", data, "application/octet-stream"))
        created = time.perf_counter()
        outcome = inference.inference_job_run(job_id=job.pk)
        finished = time.perf_counter()
        job.refresh_from_db()
        if job.status != InferenceJob.Status.SUCCEEDED:
            raise RuntimeError(f"inference job {outcome}: {job.error}")
        return finished - created, finished - began, job.seconds

    def split_pass() -> float:
        job = inference.inference_job_create(owner=owner, model_version=model_version,
                                             dataset=model_version.dataset, split="test")
        began = time.perf_counter()
        inference.inference_job_run(job_id=job.pk)
        return time.perf_counter() - began

    # Warm-up: tracing, the job's own predictor, the dataset arrays, first file writes.
    raw_pass(), raw_pass(predictor_1), job_pass(), split_pass()
    raw, ort_1, run_s, create_run_s, job_field_s, split_s, unlabelled_s = ([] for _ in range(7))
    for _ in range(cfg["batch_repeats"]):  # interleaved: load changes hit every side alike
        raw.append(raw_pass())
        ort_1.append(raw_pass(predictor_1))
        run, total, field = job_pass()
        run_s.append(run), create_run_s.append(total), job_field_s.append(field)
        split_s.append(split_pass())
        unlabelled_s.append(job_pass(npz_unlabelled)[0])

    def rate(seconds: list[float]) -> dict:
        median = float(np.median(seconds))
        return {"seconds": [round(s, 4) for s in seconds], "median_seconds": median,
                "images_per_s": n / median}

    # One image, as a web request predicts it: ONNX Runtime (1 thread) against the model called
    # through a compiled tf.function.
    single = np.ascontiguousarray(test_images[:1])
    tf_predictor = Predictor.from_file(model_path, runtime="tensorflow")
    tf_single, ort_single = [], []
    for _ in range(10):
        tf_predictor.predict(single), predictor_1.predict(single)
    for _ in range(cfg["single_runs"]):
        began = time.perf_counter()
        tf_predictor.predict(single)
        tf_single.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        predictor_1.predict(single)
        ort_single.append((time.perf_counter() - began) * 1000)

    result = {"images": n, "batch_size": size, "repeats": cfg["batch_repeats"],
              "predictor": rate(raw) | {"runtime": predictor.runtime,
                                        "intra_op_threads": predictor.threads},
              "platform_job": rate(run_s) | {
                  "what": "inference_job_run on an uploaded .npz: read input, predict, "
                          "CSV/JSON results, report, SUCCEEDED",
                  "job_seconds_field": job_field_s},
              "platform_job_with_create": rate(create_run_s) | {
                  "what": "inference_job_create (validate + store upload) + inference_job_run"},
              "platform_job_split": rate(split_s) | {"what": "inference_job_run on the test split"},
              "platform_job_unlabelled": rate(unlabelled_s) | {
                  "what": "inference_job_run on an .npz without labels (no evaluation report)"},
              "onnx_1_thread": rate(ort_1) | {"intra_op_threads": 1},
              "onnx_reference_images_per_s": ONNX_REFERENCE_IMAGES_PER_S,
              "single_image_ms": {"tf_function": _percentiles(tf_single),
                                  "onnxruntime_1_thread": _percentiles(ort_single)}}
    print(f"   batch {size}: ONNX Runtime {result['predictor']['images_per_s']:.0f} img/s, "
          f"platform job {result['platform_job']['images_per_s']:.0f} img/s", flush=True)
    return result


def _gradcam(model_path, test_images, cfg) -> dict:
    from medml import explain
    from medml.infer import Predictor

    predictor = Predictor.from_file(model_path)
    cam = explain.GradCam(predictor.model)
    heat, full = [], []
    for i in range(10):
        image = test_images[i:i + 1]
        explain.overlay_png(image[0], cam.heatmaps(image, [0])[0])
    for i in range(cfg["gradcam_runs"]):
        image = test_images[i % 64:i % 64 + 1]
        cls = [int(np.argmax(predictor.predict(image)[0]))]
        began = time.perf_counter()
        heatmap = cam.heatmaps(image, cls)
        heat.append((time.perf_counter() - began) * 1000)
        explain.overlay_png(image[0], heatmap[0])
        full.append((time.perf_counter() - began) * 1000)
    result = {"runs": cfg["gradcam_runs"], "layer": cam.layer_name,
              "heatmap_ms": _percentiles(heat), "heatmap_and_overlay_png_ms": _percentiles(full)}
    print(f"   Grad-CAM median {result['heatmap_ms']['median']:.1f} ms "
          f"(with overlay PNG {result['heatmap_and_overlay_png_ms']['median']:.1f} ms)", flush=True)
    return result


def run(*, seeds=None, quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-serving-out-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "bench.serving", "--out", str(out)]
        subprocess.run(command + (["--quick"] if quick else []), cwd=ROOT, check=True)
        result = json.loads(out.read_text())
    v, t = result["values"], result["targets"]
    print(f"   API ratio {v['api_ratio']:.3f} (≥ {t['api_ratio']}), platform server median "
          f"{v['api_server_median_ms']:.2f} ms (≤ {t['api_server_median_ms']}), batch ratio "
          f"{v['batch_ratio']:.3f} (≥ {t['batch_ratio']}), Grad-CAM {v['gradcam_median_ms']:.1f} ms "
          f"(≤ {t['gradcam_median_ms']})", flush=True)
    return result


def _main() -> int:
    parser = argparse.ArgumentParser(description="The serving benchmark's measuring process.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from bench.common import _json_default

    # A terminated run still stops its servers and Redis (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    result = _measure(args.quick)
    Path(args.out).write_text(json.dumps(result, default=_json_default))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
