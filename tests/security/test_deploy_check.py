"""``manage.py check --deploy`` is clean with the production settings that ``make check-deploy`` uses.

The environment is read from the Makefile's ``check-deploy`` recipe, so the test and the target
cannot drift apart; the check runs in a subprocess on ``medplatform.settings`` (not the test
settings), with warnings counted as failures.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]


def make_target_environment() -> dict[str, str]:
    """The ``VAR=value`` assignments of the Makefile's ``check-deploy`` recipe."""
    makefile = (BASE_DIR / "Makefile").read_text()
    recipe = re.search(r"^check-deploy:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no check-deploy target"
    assert "check --deploy --fail-level WARNING" in recipe.group(1)
    variables = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\$\$\([^)]*\)|\S+)", recipe.group(1)))
    # The recipe draws a random key from /dev/urandom; any long random key will do here.
    assert variables.pop("SECRET_KEY").startswith("$$(")
    return {**variables, "SECRET_KEY": secrets.token_urlsafe(48)}


def run_check(tmp_path: Path, overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SECURE_", "SESSION_", "CSRF_", "DJANGO_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "medplatform.settings",
        "MEDPLATFORM_VAR_DIR": str(tmp_path / "var"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **overrides,
    })
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300,
    )


def test_makefile_sets_the_production_switches():
    variables = make_target_environment()
    assert variables["DEBUG"] == "0"
    for switch in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        assert variables[switch] == "1"
    assert int(variables["SECURE_HSTS_SECONDS"]) >= 31536000


@pytest.mark.slow  # a fresh interpreter loads the whole project (tens of seconds on a small machine)
def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = run_check(tmp_path, make_target_environment())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert not re.search(r"\(security\.W\d+\)", output), output


@pytest.mark.slow
def test_check_deploy_catches_missing_switches(tmp_path):
    """The same check fails when the production switches are left out (so it really checks)."""
    variables = make_target_environment()
    for switch in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_HSTS_SECONDS"):
        variables.pop(switch)
    result = run_check(tmp_path, variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012"):
        assert warning in output, output
