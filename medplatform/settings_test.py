"""Settings for the test suite: the same as production-like settings, isolated in a temp folder.

Database and broker come from DATABASE_URL / REDIS_URL when set (CI points them at PostgreSQL and
Redis); otherwise SQLite and an embedded Redis server that tests/conftest.py starts.
"""

import os
import tempfile

os.environ.setdefault("MEDPLATFORM_VAR_DIR", tempfile.mkdtemp(prefix="medplatform-test-"))

from medplatform.settings import *  # noqa: F403

# A file, not memory, so that worker processes started by tests see the same test database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}  # noqa: F405

WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Unit tests run tasks inline; tests that exercise a real worker switch this off.
CELERY_TASK_ALWAYS_EAGER = True
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"anon": None, "user": None}}  # noqa: F405
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
