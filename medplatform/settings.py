"""Django settings for MedPlatform, read from the environment (see README and .env.example)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from medplatform.env import BASE_DIR, broker_url, embedded_redis_socket, env, var_dir

VAR_DIR = var_dir()


def _default_secret_key() -> str:
    """A per-installation key kept in the var folder, so a bare checkout runs with no setup."""
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env("SECRET_KEY", default=None) or _default_secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "medplatform",
    "classifier",
    "training",
]

MIDDLEWARE = [
    "medplatform.middleware.ServerTimingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "medplatform.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "medplatform.middleware.ContentSecurityPolicyMiddleware",
    "medplatform.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "medplatform.urls"
WSGI_APPLICATION = "medplatform.wsgi.application"
ASGI_APPLICATION = "medplatform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web server, worker and launcher share one SQLite file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        # The WAL journal lets readers and the one writer proceed together (the journal mode is
        # stored in the file; asking again is a no-op), and with it synchronous=NORMAL is safe.
        {"timeout": 30, "transaction_mode": "IMMEDIATE",
         "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Connections are kept between requests (opening one costs more than a whole classification)
# and checked before reuse, so a connection broken by a database restart is replaced, not used.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed log-ins lock a username at the client address they came from (and, with many more
# failures, the username everywhere, or the address for every username) for a while; see
# medplatform/auth.py. The lockout backend comes first so a locked login is refused outright.
AUTHENTICATION_BACKENDS = [
    "medplatform.auth.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_LOCKOUT_FAILURES = env.int("LOGIN_LOCKOUT_FAILURES", default=5)
LOGIN_LOCKOUT_USERNAME_FAILURES = env.int("LOGIN_LOCKOUT_USERNAME_FAILURES", default=50)
LOGIN_LOCKOUT_ADDRESS_FAILURES = env.int("LOGIN_LOCKOUT_ADDRESS_FAILURES", default=20)
LOGIN_LOCKOUT_WINDOW = env.int("LOGIN_LOCKOUT_WINDOW", default=15 * 60)
LOGIN_LOCKOUT_DURATION = env.int("LOGIN_LOCKOUT_DURATION", default=15 * 60)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files are served by WhiteNoise; every JS/CSS library is vendored, nothing comes from a CDN.
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))

# Media (datasets, uploads, model artifacts): a local folder unless S3-compatible storage is set.
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "/media/"  # never served directly: files go through views that check ownership
STORAGE_BACKEND = env("STORAGE_BACKEND", default="local")
if STORAGE_BACKEND == "s3":
    default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env("AWS_S3_REGION_NAME", default=None),
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",  # follows MEDIA_ROOT
    }
STORAGES = {
    "default": default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Upload limits: Django's own, plus the dataset import limits applied to archive contents.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=5 * 1024 * 1024)
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("DATA_UPLOAD_MAX_NUMBER_FILES", default=64)
DATASET_UPLOAD_MAX_BYTES = env.int("DATASET_UPLOAD_MAX_BYTES", default=512 * 1024 * 1024)
DATASET_IMPORT_MAX_MEMBERS = env.int("DATASET_IMPORT_MAX_MEMBERS", default=200_000)
DATASET_IMPORT_MAX_TOTAL_BYTES = env.int("DATASET_IMPORT_MAX_TOTAL_BYTES", default=2 * 1024**3)

# Classification uploads: per request, per file, and decoded size limits.
PREDICTION_MAX_FILES = env.int("PREDICTION_MAX_FILES", default=16)
PREDICTION_MAX_BYTES = env.int("PREDICTION_MAX_BYTES", default=10 * 1024 * 1024)
PREDICTION_MAX_PIXELS = env.int("PREDICTION_MAX_PIXELS", default=4096 * 4096)
MODEL_CACHE_DIR = Path(env("MODEL_CACHE_DIR", default=str(VAR_DIR / "model-cache")))
# CPU threads of one ONNX Runtime call: a web request classifies a few images, and the web
# server already runs one process per core, so 1. Batch jobs in workers use every core.
PREDICTION_THREADS = env.int("PREDICTION_THREADS", default=1)
# An answer whose predicted class has a lower probability carries a "low confidence" warning.
PREDICTION_LOW_CONFIDENCE = env.float("PREDICTION_LOW_CONFIDENCE", default=0.6)
# Tokens and models read by API requests stay this long in the shared cache at most (they are
# dropped at once when changed through the ORM; see medplatform/rowcache.py). 0: no caching.
ROW_CACHE_SECONDS = env.int("ROW_CACHE_SECONDS", default=60)

# MedMNIST: a local folder of official .npz files, or the official download when online.
MEDMNIST_DIR = env("MEDMNIST_DIR", default=str(BASE_DIR.parent / "shared" / "data"))
MEDMNIST_IMPORT = env.list("MEDMNIST_IMPORT", default=["bloodmnist", "breastmnist"])
MEDMNIST_DOWNLOAD_TIMEOUT = env.float("MEDMNIST_DOWNLOAD_TIMEOUT", default=10.0)
# A download is stopped (and nothing kept) past this size; no 2D file that fits the import
# limits above comes close.
MEDMNIST_DOWNLOAD_MAX_BYTES = env.int("MEDMNIST_DOWNLOAD_MAX_BYTES", default=4 * 1024**3)
MODEL_EVALUATION_BOOTSTRAP = env.int("MODEL_EVALUATION_BOOTSTRAP", default=1000)
MEDML_WEIGHTS_DIR = env("MEDML_WEIGHTS_DIR", default=str(VAR_DIR / "weights"))
WORK_DIR = Path(env("MEDPLATFORM_WORK_DIR", default=str(VAR_DIR / "work")))

# Celery: Redis broker (embedded server when REDIS_URL is unset); job state lives in the database.
CELERY_BROKER_URL = broker_url(VAR_DIR)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=6 * 3600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=6 * 3600 + 300)
# Redelivery of unacknowledged tasks must come after the hard limit, never during a live run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 1800}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
JOB_HEARTBEAT_TIMEOUT = env.int("JOB_HEARTBEAT_TIMEOUT", default=120)
# Seconds a job may wait queued before the sweeper checks that the broker still holds its message.
JOB_QUEUED_GRACE = env.float("JOB_QUEUED_GRACE", default=300.0)
# Consecutive runs of one job whose worker died before the job is failed instead of resumed.
JOB_MAX_DELIVERIES = env.int("JOB_MAX_DELIVERIES", default=10)
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-jobs": {
        "task": "training.tasks.sweep_stale_jobs",
        "schedule": env.float("JOB_SWEEP_INTERVAL", default=30.0),
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an anonymous API request gets 401 with a WWW-Authenticate header.
        "medplatform.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Documents the errors every operation can answer (classifier/api/schema.py).
    "DEFAULT_SCHEMA_CLASS": "classifier.api.schema.ApiAutoSchema",
    # A bad ?limit= or ?offset= is a 400, and a page holds at most 500 rows.
    "DEFAULT_PAGINATION_CLASS": "classifier.api.pagination.CheckedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        "medplatform.throttling.AnonRateThrottle",
        "medplatform.throttling.UserRateThrottle",
    ],
    # Proxies in front of the web server that append to X-Forwarded-For (0: use the peer address,
    # which a client cannot forge). Rate limits and log-in lockout count per address found so.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
    "DEFAULT_THROTTLE_RATES": {
        "anon": env("API_THROTTLE_ANON", default="60/min"),
        "user": env("API_THROTTLE_USER", default="1200/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MedPlatform API",
    "DESCRIPTION": "Datasets, training jobs, models and predictions for medical image classifiers.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}



def _redis_cache_location() -> str | None:
    """The Redis server for the cache, as a redis-py URL; ``None`` when there is none.

    ``REDIS_URL`` when set (Celery's ``redis+socket://`` form becomes redis-py's ``unix://``),
    else the embedded server's socket while that server runs (the launcher starts it before the
    web server). Without either, as in the test suite, the cache is per process.
    """
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        from medplatform.embedded_redis import is_running

        socket = embedded_redis_socket(VAR_DIR)
        if not is_running(socket):
            return None
        url = f"redis+socket://{socket}"
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+socket", "socket"):
        path, _, query = rest.partition("?")
        params = parse_qs(query)
        db = (params.get("virtual_host") or params.get("db") or ["0"])[0]
        return f"unix://{path}?db={db}"
    return url


# Log-in lockout counts and API rate limits live in the cache: shared through Redis when there is
# one, so that every web process sees the same counts.
_CACHE_LOCATION = _redis_cache_location()
# Requests go on without the cache when it fails (rows from the database, uncounted rate limits):
# a Redis that hangs rather than refuses must fail fast too.
REDIS_CACHE_OPTIONS = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}
CACHES = {
    "default": {
        "BACKEND": "medplatform.cache.RedisCache",
        "LOCATION": _CACHE_LOCATION,
        "KEY_PREFIX": "medplatform-cache",
        "OPTIONS": REDIS_CACHE_OPTIONS,
    } if _CACHE_LOCATION else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# Security: production values come from the environment (see README, "Deploying").
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
}
