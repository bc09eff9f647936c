"""The container setup in docker/: compose services, Dockerfiles, entrypoint, healthcheck.

Nothing here needs a Docker engine, Django or the database. The entrypoint and the healthcheck
run for real, against stand-in `python`, `gunicorn` and `celery` commands that record how they
were called. Checks that need a tool this machine may lack (docker compose, shellcheck,
hadolint) skip when it is missing.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
APP_SERVICES = ["web", "worker", "gpu-worker", "beat"]


def _load_requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load_requirements_module()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolation_default(value: str) -> str:
    """'${VAR:-fallback}' -> 'fallback'; anything else unchanged."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


# --- compose.yaml ----------------------------------------------------------------------------


def test_compose_defines_the_database_broker_web_workers_and_beat(services):
    assert set(services) >= {"postgres", "redis", *APP_SERVICES}


def test_only_the_gpu_worker_waits_for_the_gpu_profile(services):
    # A plain `docker compose up` on a CPU-only host must start everything else.
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert [name for name, service in services.items() if "profiles" in service] == ["gpu-worker"]


def test_gpu_worker_reserves_the_hosts_nvidia_gpus(services):
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices


def test_gpu_worker_runs_the_gpu_image_on_the_training_queue_only(services):
    gpu_worker = services["gpu-worker"]
    assert gpu_worker["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu_worker["command"] == ["gpu-worker"]
    assert gpu_worker["environment"]["CELERY_QUEUES"] == "training"


def test_cpu_worker_takes_every_queue_by_default(services):
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert worker["command"] == ["worker"]
    queues = interpolation_default(worker["environment"]["CELERY_QUEUES"])
    assert queues.split(",") == ["default", "inference", "training"]


def test_web_publishes_port_8000_and_has_a_healthcheck(services):
    web = services["web"]
    assert any(str(port).endswith(":8000") for port in web["ports"])
    # The image's healthcheck script, which requests /healthz for the web role (tested below).
    assert web["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/medplatform-healthcheck"]
    assert "/healthz" in HEALTHCHECK.read_text()


def test_app_services_start_after_a_healthy_database_and_broker(services):
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_workers_and_beat_start_after_web_has_migrated(services):
    for name in ["worker", "gpu-worker", "beat"]:
        assert services[name]["depends_on"]["web"]["condition"] == "service_healthy", name


def test_database_and_broker_report_their_health(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_app_services_share_settings_and_point_at_the_compose_database_and_broker(services):
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["DJANGO_SETTINGS_MODULE"] == "medplatform.settings", name
        assert environment["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}", name
        assert "@postgres:5432/medplatform" in environment["DATABASE_URL"], name


def test_secrets_must_be_provided_rather_than_defaulted(services):
    environment = services["web"]["environment"]
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in environment["DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_web_and_workers_share_the_media_volume(services):
    for name in ["web", "worker", "gpu-worker"]:
        assert "media:/data/media" in services[name]["volumes"], name
        assert services[name]["environment"]["MEDIA_ROOT"] == "/data/media", name


def test_workers_share_their_training_checkpoints(services):
    for name in ["worker", "gpu-worker"]:
        assert "work:/data/work" in services[name]["volumes"], name
    for dockerfile in DOCKERFILES:
        assert "MEDPLATFORM_WORK_DIR=/data/work" in dockerfile.read_text()


def test_medmnist_folder_is_mounted_read_only(services):
    for name in ["web", "worker", "gpu-worker"]:
        mounts = [v for v in services[name]["volumes"] if v.endswith(":/data/medmnist:ro")]
        assert mounts, name
        assert services[name]["environment"]["MEDMNIST_DIR"] == "/data/medmnist", name


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return result.returncode == 0


@pytest.mark.skipif(not _docker_compose_available(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_file_and_insists_on_the_secrets(tmp_path):
    command = ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "gpu", "config"]
    # An empty env file stands in for docker/.env, so a developer's own file plays no part.
    command[4:4] = ["--env-file", str(tmp_path / "empty.env")]
    (tmp_path / "empty.env").write_text("")
    # The compose file interpolates these; the test run's own values must not leak in.
    interpolated = {"SECRET_KEY", "POSTGRES_PASSWORD", "DATABASE_URL", "REDIS_URL"}
    base_env = {k: v for k, v in os.environ.items() if k not in interpolated}

    configured = subprocess.run(
        [*command, "--format", "json"],
        env={**base_env, "SECRET_KEY": "k", "POSTGRES_PASSWORD": "p"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert configured.returncode == 0, configured.stderr
    resolved = json.loads(configured.stdout)["services"]
    assert resolved["web"]["environment"]["DATABASE_URL"] == (
        "postgres://medplatform:p@postgres:5432/medplatform"
    )

    missing = subprocess.run([*command, "--quiet"], env=base_env, capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    assert "SECRET_KEY" in missing.stderr or "POSTGRES_PASSWORD" in missing.stderr


# --- Dockerfiles -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def copy_sources(path: Path) -> list[str]:
    """Build-context paths that COPY/ADD instructions read (copies between stages excluded)."""
    sources = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_in_the_repository(dockerfile):
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing path {source!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_copied_path_is_left_out_of_the_build_context(dockerfile):
    for source in copy_sources(dockerfile):
        for pattern in dockerignore_patterns():
            assert not fnmatch.fnmatch(source, pattern.lstrip("/")), (source, pattern)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_an_unprivileged_user_through_the_entrypoint(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["medplatform-entrypoint"]') in instructions
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned_to_a_python_3_11_release(dockerfile):
    arguments = dict(
        arguments.split("=", 1)
        for keyword, arguments in dockerfile_instructions(dockerfile)
        if keyword == "ARG" and "=" in arguments
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", arguments["PYTHON_IMAGE"])


def test_cpu_image_serves_static_files_and_port_8000():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    assert ("EXPOSE", "8000") in instructions
    assert ("CMD", '["web"]') in instructions
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "collectstatic --noinput" in runs


def test_gpu_image_never_installs_the_cpu_tensorflow_build():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.gpu")
    assert ("CMD", '["gpu-worker"]') in instructions
    pip_installs = [
        command.strip()
        for keyword, arguments in instructions
        if keyword == "RUN"
        for command in arguments.split("&&")
        if "pip install" in command
    ]
    assert any("-r requirements.txt" in command for command in pip_installs)
    # Anything else would pull pyproject.toml's tensorflow-cpu pin in beside the CUDA build.
    for command in pip_installs:
        assert "-r requirements.txt" in command or "--no-deps" in command, command
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "requirements.py export --gpu" in runs
    assert "requirements.py check --gpu" in runs


# --- docker/requirements.py ------------------------------------------------------------------


def test_cpu_requirements_are_the_project_dependencies_as_written():
    assert requirements.export(gpu=False) == requirements.project_dependencies()


def test_gpu_requirements_swap_tensorflow_for_its_cuda_build_at_the_pinned_version():
    dependencies = requirements.project_dependencies()
    pinned = {
        re.search(r"==\s*([\w.]+)", r).group(1)
        for r in dependencies
        if requirements.requirement_name(r) in {"tensorflow", "tensorflow-cpu"}
    }
    assert len(pinned) == 1

    exported = requirements.export(gpu=True)

    names = [requirements.requirement_name(r) for r in exported]
    assert "tensorflow-cpu" not in names
    assert exported.count(f"tensorflow[and-cuda]=={pinned.pop()}") == 1
    others = [
        r for r in dependencies if requirements.requirement_name(r) not in {"tensorflow", "tensorflow-cpu"}
    ]
    assert [r for r in exported if not r.startswith("tensorflow")] == others


def test_gpu_export_refuses_an_unpinned_tensorflow(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["keras==3.15.1", "tensorflow-cpu>=2.20"]\n')
    with pytest.raises(ValueError, match="pinned"):
        requirements.export(gpu=True, pyproject=pyproject)


def test_dependency_check_tolerates_only_the_deliberate_gaps():
    assert requirements.accepted_gap("medmnist 3.0.2 requires torch, which is not installed.", gpu=False)
    gpu_gap = "medplatform 0.1.0 requires tensorflow-cpu, which is not installed."
    assert requirements.accepted_gap(gpu_gap, gpu=True)
    assert not requirements.accepted_gap(gpu_gap, gpu=False)
    assert not requirements.accepted_gap("keras 3.15.1 requires h5py, which is not installed.", gpu=True)


# --- docker/entrypoint.sh --------------------------------------------------------------------


def test_entrypoint_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_entrypoint_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_dockerfiles_pass_hadolint():
    result = subprocess.run(["hadolint", *map(str, DOCKERFILES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


STUB = """#!/bin/sh
printf '%s\\n' "$(basename "$0") $*" >> "$STUB_LOG"
if [ -n "${STUB_FAIL:-}" ]; then
  case "$*" in *"$STUB_FAIL"*) exit "${STUB_FAIL_CODE:-1}" ;; esac
fi
exit 0
"""


class Sandbox:
    """Stand-in commands on PATH; each call is recorded as one line 'name args'."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name in ["python", "gunicorn", "celery"]:
            stub = self.bin / name
            stub.write_text(STUB)
            stub.chmod(0o755)
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.role_file = tmp_path / "role"
        self.tmp_path = tmp_path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.tmp_path),
            "STUB_LOG": str(self.log),
            "MEDPLATFORM_ROLE_FILE": str(self.role_file),
            **extra,
        }

    def entrypoint(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(ENTRYPOINT), *args],
            env=self.env(**extra),
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def role(self) -> str:
        return self.role_file.read_text().strip()


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


def test_web_migrates_ensures_the_admin_imports_medmnist_then_serves(sandbox):
    result = sandbox.entrypoint("web")

    assert result.returncode == 0, result.stderr
    assert sandbox.calls() == [
        "python manage.py migrate --noinput",
        "python manage.py ensure_admin",
        "python manage.py import_medmnist --all --keep-going",
        "gunicorn medplatform.wsgi:application --bind 0.0.0.0:8000 --workers 2 --threads 4"
        " --timeout 300 --keep-alive 65 --worker-tmp-dir /dev/shm --access-logfile -",
    ]
    assert sandbox.role() == "web"


def test_web_serves_even_when_the_medmnist_import_fails(sandbox):
    result = sandbox.entrypoint("web", STUB_FAIL="import_medmnist")

    assert result.returncode == 0
    assert sandbox.calls()[-1].startswith("gunicorn medplatform.wsgi:application")
    assert "import_medmnist --all --keep-going' failed" in result.stderr


def test_web_does_not_serve_when_migrations_fail(sandbox):
    result = sandbox.entrypoint("web", STUB_FAIL="migrate")

    assert result.returncode != 0
    assert not any(call.startswith("gunicorn") for call in sandbox.calls())


def test_web_passes_extra_arguments_to_gunicorn_and_can_skip_start_up_steps(sandbox):
    result = sandbox.entrypoint(
        "web", "--log-level", "debug", MIGRATE_ON_START="0", IMPORT_MEDMNIST_ON_START="0"
    )

    assert result.returncode == 0
    assert sandbox.calls()[0] == "python manage.py ensure_admin"
    assert sandbox.calls()[-1].endswith("--access-logfile - --log-level debug")


def test_worker_consumes_every_queue_one_task_at_a_time(sandbox):
    result = sandbox.entrypoint("worker")

    assert result.returncode == 0
    assert sandbox.calls() == [
        "celery -A medplatform worker --hostname cpu@%h --queues default,inference,training"
        " --concurrency 1 --prefetch-multiplier 1 --loglevel INFO"
    ]
    assert sandbox.role() == "worker cpu"


def test_gpu_worker_takes_training_jobs_in_a_fresh_process_each(sandbox):
    result = sandbox.entrypoint("gpu-worker")

    assert result.returncode == 0
    gpu_probe, worker = sandbox.calls()
    assert gpu_probe.startswith("python -c") and "list_physical_devices" in gpu_probe
    assert worker == (
        "celery -A medplatform worker --hostname gpu@%h --queues training"
        " --concurrency 1 --prefetch-multiplier 1 --loglevel INFO --max-tasks-per-child 1"
    )
    assert sandbox.role() == "worker gpu"


def test_gpu_worker_refuses_to_start_without_a_gpu(sandbox):
    result = sandbox.entrypoint("gpu-worker", STUB_FAIL="list_physical_devices")

    assert result.returncode == 1
    assert "sees no GPU" in result.stderr
    assert not any(call.startswith("celery") for call in sandbox.calls())


def test_gpu_worker_can_be_told_to_train_on_the_cpu(sandbox):
    result = sandbox.entrypoint("gpu-worker", REQUIRE_GPU="0")

    assert result.returncode == 0
    assert [call.split()[0] for call in sandbox.calls()] == ["celery"]


def test_beat_keeps_its_schedule_outside_the_read_only_code(sandbox):
    result = sandbox.entrypoint("beat")

    assert result.returncode == 0
    assert sandbox.calls() == [
        "celery -A medplatform beat --schedule /tmp/celerybeat-schedule --loglevel INFO"
    ]
    assert sandbox.role() == "beat"


def test_manage_runs_a_management_command_without_touching_the_role(sandbox):
    sandbox.role_file.write_text("web\n")

    result = sandbox.entrypoint("manage", "import_medmnist", "--all")

    assert result.returncode == 0
    assert sandbox.calls() == ["python manage.py import_medmnist --all"]
    # Run with `docker compose exec web ...`, it must leave the web healthcheck as it was.
    assert sandbox.role() == "web"


def test_other_commands_run_as_given_and_no_command_is_an_error(sandbox):
    assert sandbox.entrypoint("celery", "--version").returncode == 0
    assert sandbox.calls() == ["celery --version"]
    assert sandbox.entrypoint().returncode == 64


# --- docker/healthcheck.py -------------------------------------------------------------------


def run_healthcheck(sandbox: Sandbox, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=sandbox.env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def healthz_server():
    """A local server whose /healthz answers with the status set on it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200
        forwarded_proto = None

        def do_GET(self):
            type(self).forwarded_proto = self.headers.get("X-Forwarded-Proto")
            self.send_response(self.status if self.path == "/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, Handler
    server.shutdown()
    server.server_close()


def test_healthcheck_passes_while_nothing_has_started(sandbox):
    assert run_healthcheck(sandbox).returncode == 0


def test_healthcheck_of_web_follows_healthz(sandbox, healthz_server):
    server, handler = healthz_server
    sandbox.role_file.write_text("web\n")
    port = str(server.server_address[1])

    assert run_healthcheck(sandbox, PORT=port).returncode == 0
    # Behind a TLS proxy the app would otherwise redirect the probe to https.
    assert handler.forwarded_proto == "https"
    handler.status = 503
    assert run_healthcheck(sandbox, PORT=port).returncode == 1


def test_healthcheck_of_web_fails_when_nothing_listens(sandbox):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = str(probe.getsockname()[1])
    sandbox.role_file.write_text("web\n")

    assert run_healthcheck(sandbox, PORT=free_port).returncode == 1


def test_healthcheck_of_a_worker_pings_this_containers_node(sandbox):
    sandbox.role_file.write_text("worker gpu\n")

    assert run_healthcheck(sandbox).returncode == 0
    assert sandbox.calls() == [
        f"celery -A medplatform inspect ping --destination gpu@{socket.gethostname()} --timeout 10"
    ]
    # Celery's exit status when no node replied.
    assert run_healthcheck(sandbox, STUB_FAIL="ping", STUB_FAIL_CODE="69").returncode == 1


def test_healthcheck_of_beat_only_needs_the_process(sandbox):
    sandbox.role_file.write_text("beat\n")

    assert run_healthcheck(sandbox).returncode == 0
    assert sandbox.calls() == []
