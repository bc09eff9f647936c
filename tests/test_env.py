"""The platform's local folder: created private, since it holds the database, uploads and key."""

from __future__ import annotations

import stat

from medplatform import env


def test_the_local_folder_is_created_readable_by_its_owner_only(tmp_path, monkeypatch):
    target = tmp_path / "platform" / "var"
    monkeypatch.setenv("MEDPLATFORM_VAR_DIR", str(target))
    assert env.var_dir() == target.resolve()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
