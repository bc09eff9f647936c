"""HEALTHCHECK of the MedPlatform images; exit status 0 means healthy.

Every role runs from the same image, so the check asks docker/entrypoint.sh which role this
container has (it writes it to MEDPLATFORM_ROLE_FILE) and probes accordingly:

    web      GET /healthz must answer 200 (the view checks the database and the broker)
    worker   the Celery node of this container must answer a ping through the broker
    beat     nothing to probe: healthy while the process runs
    (none)   started some other way (a one-off command, a shell): nothing to probe

Standard library only, besides the ``celery`` command installed with the project.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

ROLE_FILE = os.environ.get("MEDPLATFORM_ROLE_FILE", "/tmp/medplatform-role")  # noqa: S108
TIMEOUT_SECONDS = 10


def web_is_healthy() -> bool:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    # Behind a TLS proxy (USE_X_FORWARDED_PROTO=1 with SECURE_SSL_REDIRECT=1) the app would
    # redirect this plain-HTTP request to https://127.0.0.1, where nothing listens; saying
    # that the request arrived over HTTPS, as the proxy does, keeps the probe on the app.
    request = urllib.request.Request(url, headers={"X-Forwarded-Proto": "https"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (fixed http URL)
            return response.status == 200
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return False


def worker_is_healthy(node_prefix: str) -> bool:
    # Same name as `--hostname PREFIX@%h` in the entrypoint: Celery expands %h to this.
    node = f"{node_prefix}@{socket.gethostname()}"
    command = ["celery", "-A", "medplatform", "inspect", "ping", "--destination", node]
    command += ["--timeout", str(TIMEOUT_SECONDS)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=6 * TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"{node}: {error}", file=sys.stderr)
        return False
    return result.returncode == 0


def main() -> int:
    try:
        with open(ROLE_FILE, encoding="utf-8") as handle:
            role, *details = handle.read().split()
    except (OSError, ValueError):
        return 0  # not started through the entrypoint (or still starting): nothing to probe
    if role == "web":
        return 0 if web_is_healthy() else 1
    if role == "worker" and details:
        return 0 if worker_is_healthy(details[0]) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
