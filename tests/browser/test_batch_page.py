"""Starting a batch inference job in a real browser, watching a real worker run it, downloading the CSV."""

from __future__ import annotations

import csv
import io
import re

import keras
import pytest

from classifier import services
from medml.architectures import build_model
from tests.factories import PASSWORD, DatasetFactory, UserFactory, medmnist_arrays
from tests.training.conftest import TINY_COUNTS, send_tasks_to_the_broker, start_worker
from training.models import InferenceJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.slow]

JOB_TIMEOUT_MS = 120_000
TEST_IMAGES = sum(TINY_COUNTS["test"])


@pytest.fixture
def worker(live_server, monkeypatch, settings, tmp_path):
    """A Celery worker (default, training and inference queues) on the live server's database."""
    settings.WORK_DIR = tmp_path / "work"
    send_tasks_to_the_broker(monkeypatch)
    process = start_worker(tmp_path / "workers")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def registered_model(tmp_path):
    """A compact CNN trained for one epoch on a tiny dataset of Vera's, in the registry."""
    user = UserFactory(username="vera")
    dataset = DatasetFactory(owner=user, name="Tiny blood", class_counts=TINY_COUNTS)
    arrays = medmnist_arrays(TINY_COUNTS)
    keras.utils.set_random_seed(0)
    network = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=3, width=8)
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    network.fit(arrays["train_images"], arrays["train_labels"].ravel(), epochs=1, batch_size=16,
                verbose=0)
    path = tmp_path / "tiny.keras"
    network.save(path)
    return services.model_version_register(
        name="tiny-cnn", architecture="compact_cnn", dataset=dataset, owner=user,
        artifact_path=path, config={"width": 8})


def test_a_user_classifies_the_test_split_watches_it_finish_and_downloads_the_csv(
        page, live_server, login, worker, registered_model, tmp_path):
    model = registered_model
    blocked = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    login(page, live_server, "vera", PASSWORD)

    page.goto(f"{live_server.url}/inference/")
    page.select_option("#id_model", str(model.pk))
    page.select_option("#id_split", "test")
    page.click("#inference-button")
    page.wait_for_url(re.compile(r"/inference/\d+/$"))

    job = InferenceJob.objects.get()
    assert page.url == f"{live_server.url}/inference/{job.pk}/"
    assert page.locator(".messages").inner_text() == f"Queued batch inference job #{job.pk}."
    # Marks this document: a reload would replace it and lose the mark.
    page.evaluate("() => { window.sameDocument = true; }")

    try:
        page.wait_for_function(
            "() => document.getElementById('inf-status').textContent === 'Succeeded'",
            timeout=JOB_TIMEOUT_MS,
        )
    except Exception:
        job.refresh_from_db()
        pytest.fail(f"job #{job.pk} is {job.status} ({job.error}); "
                    f"worker log: {worker.log()[-3000:]}")
    assert page.evaluate("() => window.sameDocument") is True

    job.refresh_from_db()
    assert job.status == InferenceJob.Status.SUCCEEDED
    assert page.locator("#inf-status").get_attribute("class") == "status status-succeeded"
    assert page.locator("#inf-done").inner_text() == str(TEST_IMAGES)
    assert page.locator("#inf-total").inner_text() == str(TEST_IMAGES)
    assert page.locator("#inf-progress .label").inner_text() == "100%"
    assert page.locator("#inf-progress .bar").evaluate("bar => bar.style.width") == "100%"
    assert page.locator("#inf-error").inner_text() == ""

    counts = {row.locator("td").nth(0).inner_text(): int(row.locator("td").nth(1).inner_text())
              for row in page.locator("#inf-summary tbody tr").all()}
    assert counts == job.summary
    assert sum(counts.values()) == TEST_IMAGES

    assert page.locator("#inf-report-card").is_visible()
    report = dict(zip(page.locator("#inf-report dt").all_inner_texts(),
                      page.locator("#inf-report dd").all_inner_texts(), strict=True))
    # Four decimals, rounded by the browser (JavaScript and Python break ties differently).
    assert re.fullmatch(r"\d\.\d{4}", report["AUC"])
    assert float(report["accuracy"]) == pytest.approx(job.report["accuracy"], abs=5.1e-5)
    assert float(report["AUC"]) == pytest.approx(job.report["roc_auc"], abs=5.1e-5)
    assert report["n"] == str(TEST_IMAGES)

    assert page.locator("#download-csv").is_visible()
    with page.expect_download() as caught:
        page.click("#download-csv")
    download = caught.value
    assert download.suggested_filename == f"inference-job-{job.pk}.csv"
    rows = list(csv.reader(io.StringIO(download.path().read_text())))
    assert rows[0] == ["name", "predicted_index", "predicted_label", "true_label",
                       *(f"p[{name}]" for name in model.dataset.class_names)]
    assert [row[0] for row in rows[1:]] == [f"test[{i}]" for i in range(TEST_IMAGES)]
    assert blocked == []

    screenshot = tmp_path / "batch-job-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # The list page links the finished job and its results.
    page.goto(f"{live_server.url}/inference/")
    row = page.locator("#inference-table tbody tr").first
    assert row.locator("td").nth(3).inner_text() == "Succeeded"
    assert row.locator("td").nth(4).inner_text() == f"{TEST_IMAGES}/{TEST_IMAGES}"
    assert row.locator("a", has_text="CSV").get_attribute("href") == (
        f"/api/v1/inference-jobs/{job.pk}/results/csv/")
