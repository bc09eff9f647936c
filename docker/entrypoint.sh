#!/usr/bin/env bash
# Entrypoint of the MedPlatform images. One image, several roles; the first argument picks one:
#
#   web              migrate, ensure the admin user, import MedMNIST, then serve with gunicorn
#   worker           Celery worker for the default, inference and training queues (CPU image)
#   gpu-worker       Celery worker for the training queue only (GPU image)
#   beat             Celery beat, the periodic sweeper of stale jobs: run exactly one per cluster
#   manage ARGS...   python manage.py ARGS...
#   anything else    run as given (bash, python, ...)
#
# Extra arguments after a role are passed on (gunicorn or celery options). Every long-running
# process replaces this script (`exec`), so the SIGTERM of `docker stop` reaches it directly:
# gunicorn then finishes its requests and Celery its current task (warm shutdown).
#
# Environment (defaults in brackets):
#   MIGRATE_ON_START [1]           web: run `migrate` first. Set 0 on extra web replicas and
#                                  run `manage migrate` once per release instead.
#   IMPORT_MEDMNIST_ON_START [1]   web: run `import_medmnist --all --keep-going` (a failure is
#                                  only logged: the platform runs without those datasets)
#   PORT [8000] GUNICORN_WORKERS [2] GUNICORN_THREADS [4] GUNICORN_TIMEOUT [300] GUNICORN_KEEP_ALIVE [65]
#   CELERY_QUEUES                  worker [default,inference,training], gpu-worker [training]
#   CELERY_CONCURRENCY [1]  CELERY_LOGLEVEL [INFO]
#   REQUIRE_GPU [1]                gpu-worker: refuse to start when TensorFlow sees no GPU, so
#                                  that a misconfigured host cannot take training jobs and
#                                  run them on its CPU
#   CELERY_BEAT_SCHEDULE [/tmp/celerybeat-schedule]
#   MEDPLATFORM_ROLE_FILE [/tmp/medplatform-role]   read by docker/healthcheck.py
set -euo pipefail

role_file="${MEDPLATFORM_ROLE_FILE:-/tmp/medplatform-role}"

log() {
  printf '[entrypoint] %s\n' "$*" >&2
}

usage() {
  log "usage: entrypoint.sh web|worker|gpu-worker|beat|manage ARGS...|COMMAND ARGS..."
}

# Tells the image's HEALTHCHECK what this container runs (see docker/healthcheck.py).
write_role() {
  if ! printf '%s\n' "$*" >"$role_file"; then
    log "warning: cannot write ${role_file}; the healthcheck will not probe this container"
  fi
}

# A start-up step whose failure must not keep the web server down.
non_fatal() {
  if ! "$@"; then
    log "warning: '$*' failed; starting anyway"
  fi
}

start_web() {
  write_role web
  if [[ "${MIGRATE_ON_START:-1}" == 1 ]]; then
    python manage.py migrate --noinput
  fi
  # Both commands are idempotent. ensure_admin reads DJANGO_SUPERUSER_USERNAME/PASSWORD/EMAIL;
  # without a password it generates one and prints it to this log.
  non_fatal python manage.py ensure_admin
  if [[ "${IMPORT_MEDMNIST_ON_START:-1}" == 1 ]]; then
    non_fatal python manage.py import_medmnist --all --keep-going
  fi
  # --worker-tmp-dir: gunicorn's heartbeat files on tmpfs, not on the overlay filesystem,
  # whose slow fsyncs can make the arbiter kill healthy workers. --keep-alive: longer than
  # clients (and load balancers, often 60 s) keep a connection idle, so the server is never the
  # side that closes a connection a request is being sent on.
  exec gunicorn medplatform.wsgi:application \
    --bind "0.0.0.0:${PORT:-8000}" \
    --workers "${GUNICORN_WORKERS:-2}" \
    --threads "${GUNICORN_THREADS:-4}" \
    --timeout "${GUNICORN_TIMEOUT:-300}" \
    --keep-alive "${GUNICORN_KEEP_ALIVE:-65}" \
    --worker-tmp-dir /dev/shm \
    --access-logfile - \
    "$@"
}

# A Celery worker. The node name is unique per container (%h is the container's hostname),
# so any number of workers, on any number of hosts, can share one broker.
start_worker() {
  local node_prefix=$1 queues=$2
  shift 2
  write_role worker "$node_prefix"
  exec celery -A medplatform worker \
    --hostname "${node_prefix}@%h" \
    --queues "$queues" \
    --concurrency "${CELERY_CONCURRENCY:-1}" \
    --prefetch-multiplier 1 \
    --loglevel "${CELERY_LOGLEVEL:-INFO}" \
    "$@"
}

require_gpu() {
  if [[ "${REQUIRE_GPU:-1}" != 1 ]]; then
    return 0
  fi
  # A separate process: CUDA must not be initialised in the worker's parent process, whose
  # prefork children would inherit an unusable CUDA context.
  if ! python -c 'import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)'; then
    log "error: TensorFlow sees no GPU. Start this container with an NVIDIA device (compose:"
    log "the gpu profile reserves one; docker run: --gpus all) on a host with the NVIDIA"
    log "driver and container toolkit, or set REQUIRE_GPU=0 to train on the CPU anyway."
    exit 1
  fi
}

if [[ $# -eq 0 ]]; then
  usage
  exit 64
fi

role=$1
shift

case "$role" in
  web)
    start_web "$@"
    ;;
  worker)
    start_worker cpu "${CELERY_QUEUES:-default,inference,training}" "$@"
    ;;
  gpu-worker)
    require_gpu
    # One task per child process: TensorFlow keeps the GPU memory it allocated until its
    # process exits, so a fresh child per training job hands the whole GPU to the next one.
    start_worker gpu "${CELERY_QUEUES:-training}" --max-tasks-per-child 1 "$@"
    ;;
  beat)
    write_role beat
    # The schedule file lives in a writable place: the code in /app belongs to root.
    exec celery -A medplatform beat \
      --schedule "${CELERY_BEAT_SCHEDULE:-/tmp/celerybeat-schedule}" \
      --loglevel "${CELERY_LOGLEVEL:-INFO}" \
      "$@"
    ;;
  # One-off commands leave the role file alone: run with `docker compose exec` inside a
  # service's container, they must not change what that container's healthcheck probes.
  manage)
    exec python manage.py "$@"
    ;;
  -h | --help | help)
    usage
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
