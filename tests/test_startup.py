"""What starting the site or a management command costs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_loads_without_tensorflow(tmp_path):
    # Commands and web workers serve through ONNX Runtime; TensorFlow (seconds to import, and
    # start-up messages on every command) loads only when a model is trained, evaluated or
    # explained.
    script = ("import django, sys; django.setup(); import medplatform.urls, classifier.admin; "
              "from django.core.management import get_commands; get_commands(); "
              "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "medplatform.settings",
           "MEDPLATFORM_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
