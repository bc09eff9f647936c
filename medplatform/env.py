"""Typed access to the environment, shared by settings and the launcher."""

from __future__ import annotations

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env file is optional; real environment variables always win.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def var_dir() -> Path:
    """Folder for everything the platform writes locally (SQLite, media, embedded Redis).

    It holds the database (sessions and API tokens among its rows), users' private uploads and
    the secret key, so it is created readable by its owner only; the default folder is also
    made so if it was created before with wider permissions.
    """
    default = BASE_DIR / "var"
    path = Path(env("MEDPLATFORM_VAR_DIR", default=str(default))).resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path == default.resolve() and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def embedded_redis_socket(base: Path | None = None) -> Path:
    return (base or var_dir()) / "redis" / "redis.sock"


def broker_url(base: Path | None = None) -> str:
    """``REDIS_URL`` when set, else the embedded Redis server's socket."""
    configured = os.environ.get("REDIS_URL", "").strip()
    if configured:
        return configured
    return f"redis+socket://{embedded_redis_socket(base)}"


def uses_embedded_redis() -> bool:
    return not os.environ.get("REDIS_URL", "").strip()
