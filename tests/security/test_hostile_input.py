"""Hostile uploads through the real API: refused with a reason, nothing stored, no subprocess.

The corpus comes from :mod:`reliability.hostile_corpus`, generated into a temporary folder. Each
file is sent, as a client would send it (raw multipart, its name untouched), to every endpoint it
targets, authenticated with an API token. For each request the test checks the status and the
reason, that no row was created and no file written under ``MEDIA_ROOT`` or ``VAR_DIR`` (nor left
in the upload temporary folder), and, through an audit hook, that no process was started.
A last test feeds the corpus through the worker code paths in a fresh process and checks its
peak memory against the cap. A complete run writes ``reliability/results/hostile_input.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from PIL import Image
from rest_framework.test import APIClient

from classifier import services
from classifier.models import Dataset, ModelVersion, Prediction
from medml import batch, dataset_io, images, infer
from reliability import hostile_corpus as corpus
from tests.factories import PASSWORD, DatasetFactory, UserFactory
from training.models import InferenceJob

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "reliability" / "results" / "hostile_input.json"


# --- recording process starts ---------------------------------------------------------------------


class _SpawnRecorder:
    """An audit hook that notes every attempt to start a process, while ``active``.

    Audit hooks cannot be removed, so one is installed for the whole test session and records
    only inside :func:`recording_spawns`.
    """

    PREFIXES = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                "os.forkpty", "os.startfile", "pty.spawn")

    def __init__(self):
        self.active = False
        self.events: list[str] = []

    def __call__(self, event: str, args) -> None:
        if self.active and event.startswith(self.PREFIXES):
            self.events.append(f"{event}{args!r:.200}")


_RECORDER = _SpawnRecorder()
sys.addaudithook(_RECORDER)


@contextlib.contextmanager
def recording_spawns():
    _RECORDER.events = []
    _RECORDER.active = True
    try:
        yield _RECORDER.events
    finally:
        _RECORDER.active = False


# --- the corpus and the cases -----------------------------------------------------------------------


# Django's answer to a SuspiciousOperation: a 400 that names no reason.
GENERIC_400 = "Bad Request (400)"


def _cases():
    cases = []
    for entry in corpus.corpus_entries():
        for endpoint in entry.endpoints:
            cases.append(pytest.param(entry.file, endpoint, id=f"{endpoint}-{entry.file}"))
    return cases


CASES = _cases()
_ROWS: dict[tuple[str, str], dict] = {}
_MEMORY: dict = {}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-corpus")
    corpus.generate(folder)
    return folder


@pytest.fixture(scope="module")
def manifest(corpus_dir) -> dict[str, corpus.Entry]:
    return {entry.file: entry for entry in corpus.load_manifest(corpus_dir)}


@pytest.fixture(scope="module", autouse=True)
def write_results():
    """After a complete run of this module, write the table the reliability document shows."""
    yield
    if len(_ROWS) != len(CASES) or not _MEMORY:
        return
    rows = [_ROWS[(entry.file, endpoint)]
            for entry in corpus.corpus_entries() for endpoint in entry.endpoints]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": ".venv/bin/python -m pytest tests/security/test_hostile_input.py",
        "database": connection.vendor,
        "corpus_files": len(corpus.corpus_entries()),
        "requests": len(rows),
        "rejected": sum(row["status"] >= 400 for row in rows),
        "limits": {"PREDICTION_MAX_BYTES": corpus.UPLOAD_LIMIT_BYTES,
                   "DATASET_UPLOAD_MAX_BYTES": corpus.ARCHIVE_UPLOAD_LIMIT_BYTES,
                   "PREDICTION_MAX_FILES": corpus.PREDICTION_MAX_FILES,
                   "DATA_UPLOAD_MAX_NUMBER_FILES": corpus.DJANGO_MAX_NUMBER_FILES,
                   "DATASET_IMPORT_MAX_MEMBERS": corpus.MAX_MEMBERS,
                   "DATASET_IMPORT_MAX_TOTAL_BYTES": corpus.MAX_TOTAL_BYTES},
        "memory": {key: value for key, value in _MEMORY.items() if key != "outcomes"},
        "rows": rows,
    }, indent=1, ensure_ascii=True) + "\n")


# --- the platform under attack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained compact CNN for the tiny 28x28 RGB, 3-class dataset (accepted files use it)."""
    import keras

    from medml.architectures import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    build_model("compact_cnn", input_shape=corpus.IMAGE_SHAPE, num_classes=3, width=8).save(path)
    return path


@pytest.fixture
def platform(settings, tmp_path, model_file, db):
    """A user with a token, a dataset and a model, and the limits the corpus is built against."""
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "upload-tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    settings.PREDICTION_MAX_BYTES = corpus.UPLOAD_LIMIT_BYTES
    settings.PREDICTION_MAX_FILES = corpus.PREDICTION_MAX_FILES
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = corpus.DJANGO_MAX_NUMBER_FILES
    settings.DATASET_UPLOAD_MAX_BYTES = corpus.ARCHIVE_UPLOAD_LIMIT_BYTES
    settings.DATASET_IMPORT_MAX_MEMBERS = corpus.MAX_MEMBERS
    settings.DATASET_IMPORT_MAX_TOTAL_BYTES = corpus.MAX_TOTAL_BYTES
    owner = UserFactory(username="mallory")
    dataset = DatasetFactory(owner=owner, name="Tiny blood")
    model = services.model_version_register(
        name="tiny-cnn", architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=model_file, config={"width": 8})
    api = APIClient()
    login = {"username": owner.username, "password": PASSWORD}
    token = api.post("/api/v1/auth/token/", login).json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    yield api, model
    infer.clear_predictor_cache()


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart body written by hand, so file names reach the server exactly as given."""
    boundary = f"hostile-{uuid.uuid4().hex}"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        body.write(f"{value}\r\n".encode())
    for field, filename, data in files:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                   f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def send(api: APIClient, model: ModelVersion, endpoint: str, entry: corpus.Entry, data: bytes):
    if endpoint == corpus.PREDICTIONS:
        fields, field = {"model": str(model.pk)}, "images"
    elif endpoint == corpus.DATASETS:
        fields, field = {}, "file"
    else:
        fields, field = {"model": str(model.pk)}, "file"
    body, content_type = multipart(fields, [(field, entry.sent_name, data)] * entry.copies)
    return api.post(corpus.ENDPOINT_URLS[endpoint], data=body, content_type=content_type)


def reason_of(response) -> str:
    """The refusal's message(s) as one line: every string in a JSON body, or the page's text.

    For an accepted upload, the warnings the platform gave.
    """
    if response.status_code < 400:
        body = response.json()
        warnings = [w for item in body for w in item.get("warnings", [])] if isinstance(body, list) else []
        return "accepted" + (": " + "; ".join(warnings) if warnings else "")
    if response.get("Content-Type", "").startswith("application/json"):
        def strings(value):
            if isinstance(value, dict):
                return [s for item in value.values() for s in strings(item)]
            if isinstance(value, list):
                return [s for item in value for s in strings(item)]
            return [str(value)]

        return "; ".join(strings(response.json()))
    return " ".join(response.content.decode(errors="replace").split())[:300]


def row_counts() -> dict[str, int]:
    models = (Prediction, Dataset, InferenceJob, ModelVersion)
    return {model.__name__: model.objects.count() for model in models}


def stored_files() -> set[str]:
    """Files under MEDIA_ROOT and VAR_DIR, except the test database and the embedded broker's."""
    found = set()
    for root in (Path(settings.MEDIA_ROOT), Path(settings.VAR_DIR)):
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("test-db.sqlite3") and "redis" not in path.parts:
                found.add(str(path))
    return found


# --- every file at every endpoint it targets --------------------------------------------------------


def test_the_corpus_has_at_least_thirty_generated_files(corpus_dir, manifest):
    files = [path for path in corpus_dir.iterdir() if path.name != "manifest.json"]
    assert len(files) >= 30
    assert sorted(path.name for path in files) == sorted(manifest)
    for entry in manifest.values():
        assert (corpus_dir / entry.file).stat().st_size == entry.size_bytes
    bombs = [entry for entry in manifest.values() if entry.category in ("decompression bomb", "zip bomb")]
    assert bombs and all(entry.size_bytes < 5 * 1024 * 1024 for entry in bombs)


@pytest.mark.parametrize(("file", "endpoint"), CASES)
def test_a_hostile_upload_is_refused_with_a_reason_and_leaves_nothing_behind(
    file, endpoint, corpus_dir, manifest, platform, django_capture_on_commit_callbacks,
):
    api, model = platform
    entry = manifest[file]
    data = (corpus_dir / file).read_bytes()
    files_before, rows_before = stored_files(), row_counts()

    with recording_spawns() as spawned, django_capture_on_commit_callbacks(execute=False):
        response = send(api, model, endpoint, entry, data)
    reason = reason_of(response)
    _ROWS[(file, endpoint)] = {
        "file": file, "category": entry.category, "endpoint": endpoint,
        "status": response.status_code, "reason": reason, "expected": entry.expected,
    }

    assert spawned == []
    assert list(Path(settings.FILE_UPLOAD_TEMP_DIR).iterdir()) == []
    if endpoint in entry.accepted:
        assert response.status_code == 201, reason
        assert row_counts()["Prediction"] == rows_before["Prediction"] + 1
        if "warning" in entry.expected:
            assert response.json()[0]["warnings"], "the conversion must be reported"
        return
    assert 400 <= response.status_code < 500, f"{response.status_code}: {reason}"
    assert reason.strip() and GENERIC_400 not in reason, reason
    assert row_counts() == rows_before
    assert stored_files() == files_before


def test_the_process_recorder_sees_a_subprocess(db):
    """The audit hook behind ``spawned == []`` does record a process start."""
    with recording_spawns() as spawned:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert any(event.startswith("subprocess.Popen") for event in spawned)


@pytest.mark.parametrize("file", ["lambda_layer.keras", "lambda_layer.h5"])
def test_model_loading_refuses_a_lambda_layer_without_running_it(corpus_dir, file):
    import keras

    with recording_spawns() as spawned, pytest.raises(ValueError, match=r"Lambda.*safe_mode"):
        if file.endswith(".keras"):
            infer.Predictor.from_file(corpus_dir / file)
        else:
            keras.models.load_model(corpus_dir / file, compile=False, safe_mode=True)
    assert spawned == []


# --- memory -----------------------------------------------------------------------------------------


def test_rejecting_the_whole_corpus_keeps_a_worker_under_the_memory_cap(corpus_dir, manifest):
    result = subprocess.run(
        [sys.executable, "-m", "reliability.hostile_corpus", "--measure-memory", str(corpus_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    memory = json.loads(result.stdout)
    _MEMORY.update(memory)

    assert memory["peak_above_baseline_mib"] <= corpus.MEMORY_CAP_MIB
    errors = [o for o in memory["outcomes"] if o["outcome"].startswith("error")]
    assert errors == []
    # Whatever the API refuses for its content, the worker's code refuses too.
    for outcome in memory["outcomes"]:
        entry = manifest[outcome["file"]]
        if entry.upload_name is None and entry.copies == 1 and outcome["endpoint"] not in entry.accepted:
            assert outcome["outcome"].startswith("rejected"), outcome


# --- the fixes, one by one ------------------------------------------------------------------------------


def png(size=(28, 28), mode="RGB", **options) -> bytes:
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def decode(data: bytes):
    return images.decode_upload(data, max_pixels=4096 * 4096, max_bytes=10 * 1024 * 1024)


def test_data_after_the_end_of_a_png_is_refused():
    with pytest.raises(images.ImageInputError, match="20 bytes follow the end of the PNG image"):
        decode(png() + b"<p>20 bytes of html!")


def test_markup_in_an_image_or_its_text_metadata_is_refused():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<iframe src=//evil.example>", zip=True)  # compressed: only Pillow sees it
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="JPEG", comment=b"<html><body>hi</body></html>")
    for data in (png(pnginfo=info), buffer.getvalue()):
        with pytest.raises(images.ImageInputError, match="HTML or script markup"):
            decode(data)


def test_an_ordinary_png_with_text_metadata_is_still_accepted():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "microscope 2.1 <calibrated>")
    assert decode(png(pnginfo=info)).size == (28, 28)


@pytest.mark.parametrize(("mode", "reason"), [("CMYK", "CMYK images are not accepted"),
                                              ("LAB", "LAB images are not accepted")])
def test_colour_spaces_that_need_a_profile_are_refused(mode, reason):
    buffer = io.BytesIO()
    Image.new(mode, (28, 28)).save(buffer, format="TIFF")
    with pytest.raises(images.ImageInputError, match=reason):
        decode(buffer.getvalue())


def test_a_multi_page_tiff_is_refused_in_uploads_and_in_dataset_zips():
    pages = [Image.new("RGB", (28, 28), (i, i, i)) for i in range(2)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(images.ImageInputError, match="the TIFF file holds 2 images"):
        decode(buffer.getvalue())
    members = {f"{c}/{i}.png": png() for c in ("a", "b") for i in range(3)}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for name, data in {**members, "a/pages.tif": buffer.getvalue()}.items():
            out.writestr(name, data)
    archive.seek(0)
    with pytest.raises(dataset_io.DatasetFormatError, match=r"'a/pages\.tif': the TIFF file holds 2"):
        dataset_io.load_image_folder_zip(archive)


def test_nan_pixels_are_refused():
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), np.nan, np.float32), mode="F").save(buffer, format="TIFF")
    image = decode(buffer.getvalue())
    with pytest.raises(images.ImageInputError, match="NaN or infinite"):
        images.to_model_input(image, height=28, width=28, channels=1)


def _forged_npz(shape) -> io.BytesIO:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("images.npy", header.getvalue() + b"\0" * 100)
    archive.seek(0)
    return archive


def test_an_npy_header_declaring_more_than_its_member_holds_is_refused_before_allocation():
    with pytest.raises(batch.BatchInputError, match=r"declares shape \(1000000000000, 28, 28, 3\)"):
        batch.read_npz(_forged_npz((10**12, 28, 28, 3)), shape=(28, 28, 3), num_classes=3)
    with pytest.raises(dataset_io.DatasetFormatError, match="but its member holds 100 bytes"):
        dataset_io.inspect_npz(_forged_npz((10**6,)), dataset_io.ImportLimits())


def test_a_batch_npz_over_the_size_limit_is_refused_before_it_is_loaded():
    archive = io.BytesIO()
    np.savez_compressed(archive, images=np.zeros((20, 28, 28, 3), np.uint8))
    archive.seek(0)
    with pytest.raises(batch.BatchInputError, match="uncompressed; the limit is 1000"):
        batch.read_npz(archive, shape=(28, 28, 3), num_classes=3,
                       limits=dataset_io.ImportLimits(max_total_bytes=1000))


def test_a_zip_with_data_before_it_is_refused():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a/1.png", png())
    polyglot = io.BytesIO(png() + archive.getvalue())
    with pytest.raises(dataset_io.DatasetFormatError, match="does not start at the beginning"):
        dataset_io.load_image_folder_zip(polyglot)


def test_the_member_count_is_read_from_the_end_record_before_the_directory():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for i in range(7):
            out.writestr(f"a/{i}.png", b"")
    archive.seek(0)
    assert dataset_io.declared_member_count(archive) == 7
    with pytest.raises(dataset_io.DatasetFormatError, match="archive has 7 members; the limit is 6"):
        dataset_io.load_image_folder_zip(archive, limits=dataset_io.ImportLimits(max_members=6))


@pytest.mark.parametrize(("name", "reason"), [
    ("../x.npz", "a path that leaves its folder"),
    ("scans/x.npz", "contains '/'"),
    ("x\x00.npz", "U+0000"),
    ("scan\u202egnp.npz", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("<b>.npz", "contains '<'"),
    ("a" * 300 + ".npz", "the limit is 255"),
])
def test_unsafe_upload_names_are_named_in_the_refusal(name, reason):
    assert reason in dataset_io.upload_name_problem(name)


@pytest.mark.parametrize("name", ["BloodMNIST (1).npz", "Zellen_Übersicht-2024.zip", "scan 07.npz"])
def test_ordinary_upload_names_are_accepted(name):
    assert dataset_io.upload_name_problem(name) is None


def test_a_batch_upload_over_the_upload_limit_is_refused(platform, settings):
    api, model = platform
    settings.DATASET_UPLOAD_MAX_BYTES = 1000
    archive = io.BytesIO()
    np.savez(archive, images=np.zeros((4, 28, 28, 3), np.uint8))
    archive.seek(0)
    archive.name = "scans.npz"
    response = api.post("/api/v1/inference-jobs/", {"model": model.pk, "file": archive}, format="multipart")
    assert response.status_code == 413
    assert response.json() == {"file": [
        "the file 'scans.npz' is larger than the limit of 1000 bytes; nothing was stored"]}
    assert not InferenceJob.objects.exists()
