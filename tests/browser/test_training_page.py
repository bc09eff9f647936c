"""Launching a training job in a real browser and watching a real worker train it, live."""

from __future__ import annotations

import re

import pytest

from classifier.models import ModelVersion
from tests.factories import PASSWORD, DatasetFactory, UserFactory
from tests.training.conftest import TINY_COUNTS, send_tasks_to_the_broker, start_worker
from training.models import TrainingJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TRAINING_TIMEOUT_MS = 120_000


@pytest.fixture
def worker(live_server, monkeypatch, settings, tmp_path):
    """A Celery worker on the live server's database; jobs the site queues go to it."""
    settings.WORK_DIR = tmp_path / "work"
    send_tasks_to_the_broker(monkeypatch)
    process = start_worker(tmp_path / "workers")
    try:
        yield process
    finally:
        process.kill()


def launch_smoke_run(page, live_server, dataset, **fields) -> None:
    """Fill the launch form for the smoke preset (``fields``: more form fields) and submit it."""
    page.goto(f"{live_server.url}/jobs/new/")
    page.select_option("#id_dataset", str(dataset.pk))
    page.select_option("#id_preset", "smoke")
    for name, value in {"batch_size": 16, **fields}.items():
        page.fill(f"#id_{name}", str(value))
    page.click("#launch-button")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))


def wait_until_succeeded(page, job, worker) -> None:
    try:
        page.wait_for_function(
            "() => document.getElementById('job-status').textContent === 'Succeeded'",
            timeout=TRAINING_TIMEOUT_MS,
        )
    except Exception:
        job.refresh_from_db()
        pytest.fail(f"job #{job.pk} is {job.status} ({job.error}); log: {job.log}\n"
                    f"worker log: {worker.log()[-3000:]}")


def test_a_user_launches_a_smoke_run_and_watches_it_finish_without_reloading(
        page, live_server, login, worker, tmp_path):
    user = UserFactory(username="wren")
    dataset = DatasetFactory(owner=user, name="Tiny blood", class_counts=TINY_COUNTS)
    blocked = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    login(page, live_server, "wren", PASSWORD)

    launch_smoke_run(page, live_server, dataset, epochs=2)

    job = TrainingJob.objects.get()
    assert page.url == f"{live_server.url}/jobs/{job.pk}/"
    assert page.locator(".messages").inner_text() == f"Queued training job #{job.pk}."
    # Marks this document: a reload would replace it and lose the mark.
    page.evaluate("() => { window.sameDocument = true; }")

    wait_until_succeeded(page, job, worker)
    assert page.evaluate("() => window.sameDocument") is True

    job.refresh_from_db()
    assert job.status == TrainingJob.Status.SUCCEEDED
    assert page.locator("#job-status").get_attribute("class") == "status status-succeeded"
    assert page.locator("#job-epoch").inner_text() == "2"
    assert page.locator("#job-total").inner_text() == "2"
    assert page.locator("#job-progress .label").inner_text() == "100%"
    page.wait_for_function(  # the bar's width is animated
        "() => { const bar = document.querySelector('#job-progress .bar');"
        " return bar.style.width === '100%'"
        " && bar.getBoundingClientRect().width >= bar.parentElement.clientWidth - 1; }"
    )
    assert page.locator("#cancel-form").is_hidden()
    assert page.locator("#retry-form").is_hidden()
    model = ModelVersion.objects.get()
    assert page.locator("#job-model").inner_text() == f"Model registered (id {model.pk})."

    rows = page.locator("#history-table tbody tr")
    assert rows.count() == 2
    for index, entry in enumerate(job.history):
        cells = rows.nth(index).locator("td").all_inner_texts()
        assert cells[0] == str(index + 1)
        assert cells[1] == f"{entry['loss']:.4f}"
        assert cells[4] == f"{entry['val_accuracy']:.4f}"

    loss_lines = page.locator("#chart-loss polyline")
    assert loss_lines.count() == 2
    assert page.locator("#chart-loss polyline.series-loss").get_attribute("points").count(",") == 2
    assert page.locator("#chart-loss polyline.series-val_loss").count() == 1
    assert page.locator("#chart-acc polyline").count() == 3  # accuracy, val accuracy, val AUC
    assert "registered" in page.locator("#job-log").inner_text()
    assert blocked == []

    screenshot = tmp_path / "training-job-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # Opened again later, the page keeps the model's name and accuracy once its script has run.
    with page.expect_response(re.compile(rf"/api/v1/training-jobs/{job.pk}/$")):
        page.reload()
    page.wait_for_function("() => document.querySelectorAll('#history-table tbody tr').length")
    assert page.locator("#job-model").inner_text() == (
        f"Model: {model} · test accuracy {model.metrics['accuracy']:.4f}")


def test_an_ensemble_job_shows_its_members_one_after_the_other(page, live_server, login, worker):
    user = UserFactory(username="wren")
    dataset = DatasetFactory(owner=user, name="Tiny blood", class_counts=TINY_COUNTS)
    login(page, live_server, "wren", PASSWORD)

    launch_smoke_run(page, live_server, dataset, epochs=1, ensemble_size=2)
    job = TrainingJob.objects.get()
    assert job.config["ensemble_size"] == 2

    wait_until_succeeded(page, job, worker)

    assert page.locator("#job-epoch").inner_text() == "2"
    assert page.locator("#job-total").inner_text() == "2"
    assert page.locator("#job-member").inner_text().strip() == "· member 2 of 2"
    cells = page.locator("#history-table tbody tr td:first-child").all_inner_texts()
    assert cells == ["1 (member 1)", "2 (member 2)"]
    # One line per member: the two runs are not joined into one curve.
    assert page.locator("#chart-loss polyline.series-loss").count() == 2
    assert "ensemble of 2 members" in page.locator("#job-log").inner_text()
    assert ModelVersion.objects.get().config["ensemble_size"] == 2
