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
    # Finished: it can be deleted, no longer cancelled (the page was rendered while it was queued).
    assert page.locator("#delete-button").is_visible()
    assert not page.locator("#cancel-button").is_visible()
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


# --- The live view, on jobs written straight to the database (no worker) ------------------------


@pytest.fixture
def watcher(page, live_server, login):
    """A signed-in user with a dataset; ``watcher.job(**fields)`` adds a job of theirs."""
    user = UserFactory(username="wren")
    dataset = DatasetFactory(owner=user, name="Tiny blood", class_counts=TINY_COUNTS)
    login(page, live_server, "wren", PASSWORD)

    class Watcher:
        @staticmethod
        def job(**fields) -> TrainingJob:
            config = {"architecture": "compact_cnn", "epochs": 10, **fields.pop("config", {})}
            return TrainingJob.objects.create(
                owner=user, dataset=dataset, config=config, preset="smoke", name="a run",
                total_epochs=config["epochs"] * config.get("ensemble_size", 1), **fields)

        @staticmethod
        def open(job: TrainingJob, rows: int) -> None:
            """Open the job's page and wait until its script has drawn ``rows`` epochs."""
            page.goto(f"{live_server.url}/jobs/{job.pk}/")
            page.wait_for_function(
                f"() => document.querySelectorAll('#history-table tbody tr').length === {rows}")

    return Watcher


def epochs_of(member: int, count: int, epochs: int = 10) -> list[dict]:
    """History entries of an ensemble member that trained ``count`` of its ``epochs``."""
    offset = (member - 1) * epochs
    return [{"epoch": offset + e, "member": member, "loss": 1.0 / e, "accuracy": 0.5,
             "val_loss": 1.1 / e, "val_accuracy": 0.5, "val_auc": None} for e in range(1, count + 1)]


@pytest.mark.parametrize("member_1_epochs", [3, 10], ids=["stopped-early", "all-epochs"])
def test_the_second_member_shows_as_training_once_the_first_is_done(
        page, watcher, member_1_epochs):
    # Member 2's batches have moved the job's epoch to the end of member 1's ten, whether member 1
    # trained them all or stopped early (the worker's part: tests/training/test_services.py).
    job = watcher.job(config={"ensemble_size": 2}, status=TrainingJob.Status.RUNNING,
                      current_epoch=10, batch_progress=0.5,
                      history=epochs_of(1, member_1_epochs))
    watcher.open(job, rows=member_1_epochs)
    assert page.locator("#job-member").inner_text().strip() == "· member 2 of 2"
    # Member 1's epochs are all behind: the job is half done, and half an epoch more.
    assert page.locator("#job-progress .label").inner_text() == "53%"
    assert page.locator("#job-progress").get_attribute("aria-valuenow") == "53"

    # Member 2's first epoch ends.
    TrainingJob.objects.filter(pk=job.pk).update(
        current_epoch=11, batch_progress=0.0,
        history=epochs_of(1, member_1_epochs) + epochs_of(2, 1))
    page.wait_for_function("() => document.getElementById('job-epoch').textContent === '11'")
    assert page.locator("#job-member").inner_text().strip() == "· member 2 of 2"
    assert page.locator("#job-progress .label").inner_text() == "55%"
    assert page.locator("#chart-loss polyline.series-loss").count() == 2


def test_cancelling_from_the_job_page_asks_first_and_then_shows_cancelling(page, watcher):
    job = watcher.job(status=TrainingJob.Status.RUNNING, current_epoch=1,
                      history=epochs_of(1, 1))
    watcher.open(job, rows=1)
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    page.click("#cancel-button")
    page.wait_for_timeout(500)
    assert questions == [f"Cancel job #{job.pk}? A cancelled job cannot resume; retrying it starts "
                         "again from the first epoch."]
    job.refresh_from_db()
    assert not job.cancel_requested

    page.once("dialog", lambda dialog: answer(dialog, True))
    with page.expect_navigation():
        page.click("#cancel-button")
    job.refresh_from_db()
    assert job.cancel_requested and len(questions) == 2
    page.wait_for_function("() => document.querySelectorAll('#history-table tbody tr').length")
    assert page.locator("#job-status").inner_text() == "Cancelling…"
    assert page.locator("#cancel-form").is_hidden()


def api_requests(page, job) -> list[str]:
    """The job page's requests for the job's JSON, as they happen."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url)
            if request.url.endswith(f"/api/v1/training-jobs/{job.pk}/") else None)
    return seen


def test_the_job_page_stops_polling_once_the_server_refuses(page, watcher):
    job = watcher.job(status=TrainingJob.Status.RUNNING, current_epoch=1,
                      history=epochs_of(1, 1))
    seen = api_requests(page, job)
    watcher.open(job, rows=1)
    page.context.clear_cookies()  # signed out, as by another tab
    with page.expect_response(lambda r: r.url.endswith(f"/training-jobs/{job.pk}/")
                              and r.status in (401, 403)):
        pass
    refused = len(seen)
    page.wait_for_timeout(3500)  # the old backoff asked again after 2 s, then every 4, 8, 15 s
    assert len(seen) == refused
    assert "reload the page" in page.locator("#job-updates").inner_text()


def test_the_job_page_does_not_poll_from_a_hidden_tab(page, watcher):
    job = watcher.job(status=TrainingJob.Status.RUNNING, current_epoch=1,
                      history=epochs_of(1, 1))
    seen = api_requests(page, job)
    watcher.open(job, rows=1)
    page.evaluate("() => Object.defineProperty(document, 'hidden', "
                  "{ configurable: true, get: () => window.tabHidden === true })")
    page.evaluate("() => { window.tabHidden = true; }")
    page.wait_for_timeout(1500)  # a request already under way may still finish
    hidden_since = len(seen)
    page.wait_for_timeout(3000)
    assert len(seen) == hidden_since

    with page.expect_request(re.compile(rf"/api/v1/training-jobs/{job.pk}/$")):
        page.evaluate("() => { window.tabHidden = false;"
                      " document.dispatchEvent(new Event('visibilitychange')); }")


def test_the_curves_break_where_a_value_is_missing_and_drop_markers_over_many_epochs(
        page, watcher):
    diverged = watcher.job(status=TrainingJob.Status.FAILED, current_epoch=4, history=[
        {"epoch": e, "loss": loss, "val_loss": 1.0 - e / 10, "accuracy": 0.5}
        for e, loss in enumerate([1.0, None, 0.8, 0.7], start=1)])
    watcher.open(diverged, rows=4)
    lines = page.locator("#chart-loss polyline.series-loss")
    assert [line.get_attribute("points").count(",") for line in lines.all()] == [1, 2]
    assert page.locator("#chart-loss polyline.series-val_loss").count() == 1
    assert page.locator("#history-table tbody tr").nth(1).locator("td").nth(1).inner_text() == "—"
    assert page.locator("#chart-loss circle").count() == 7  # few epochs: every point marked

    long = watcher.job(config={"epochs": 300}, status=TrainingJob.Status.RUNNING,
                       current_epoch=300, history=[
                           {"epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e} for e in range(1, 301)])
    watcher.open(long, rows=300)
    assert page.locator("#chart-loss polyline").count() == 2
    assert page.locator("#chart-loss circle").count() == 0


def test_a_single_epoch_is_drawn_in_the_middle_of_a_chart_labelled_with_it(page, watcher):
    job = watcher.job(config={"epochs": 1}, status=TrainingJob.Status.SUCCEEDED, current_epoch=1,
                      history=epochs_of(1, 1, epochs=1))
    watcher.open(job, rows=1)
    chart = page.locator("#chart-loss")
    assert "epoch 1" in chart.locator("text").all_text_contents()
    xs = {float(x) for x in chart.locator("circle").evaluate_all("cs => cs.map(c => c.getAttribute('cx'))")}
    assert len(xs) == 1
    # The plot spans x = 44 to 590 of the chart's 600 units (charts.js margins).
    assert abs(xs.pop() - (44 + 590) / 2) < 1


# --- The launch form -----------------------------------------------------------------------------


def summary_row(page, key: str):
    """The effective-configuration summary's entry for setting ``key``."""
    return page.locator(f'#config-summary-list > div[data-key="{key}"]')


def test_the_launch_form_shows_the_presets_values_and_what_will_train(page, live_server, login):
    user = UserFactory(username="wren")
    blood = DatasetFactory(owner=user, name="Tiny blood", class_counts=TINY_COUNTS)
    blocked = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    login(page, live_server, "wren", PASSWORD)
    page.goto(f"{live_server.url}/jobs/new/?dataset={blood.pk}")
    assert page.locator("#config-summary").is_visible()
    assert summary_row(page, "preset").locator("dd").inner_text() == "(none: defaults)"
    assert page.locator("#id_optimizer option[value='']").inner_text() == "(default: Adam)"

    page.select_option("#id_preset", "fast_cpu_blood")
    assert page.locator("#id_epochs").get_attribute("placeholder") == "18"
    assert page.locator("#id_learning_rate").get_attribute("placeholder") == "0.003"
    assert page.locator("#id_optimizer option[value='']").inner_text() == "(preset: AdamW)"
    assert page.locator("#id_rotate90 option[value='']").inner_text() == "(preset: Yes)"
    assert summary_row(page, "preset").locator("dd").inner_text() == "Fast CPU recipe for BloodMNIST"
    assert summary_row(page, "learning_rate").locator("dd").inner_text() == "0.003"
    assert summary_row(page, "optimizer").locator("dd").inner_text() == "AdamW"
    assert summary_row(page, "tta").locator("dd").inner_text() == "yes"  # no field, still shown
    assert page.locator("#config-summary-list .override").count() == 0
    assert page.locator("#preset-note").is_hidden()  # a blood recipe on a blood dataset

    page.select_option("#id_preset", "smoke")
    assert page.locator("#id_epochs").get_attribute("placeholder") == "2"
    assert page.locator("#id_learning_rate").get_attribute("placeholder") == "0.001"
    assert page.locator("#id_optimizer option[value='']").inner_text() == "(preset: Adam)"
    assert summary_row(page, "epochs").locator("dd").inner_text() == "2"
    assert summary_row(page, "tta").locator("dd").inner_text() == "no"

    page.fill("#id_epochs", "5")
    page.select_option("#id_augmentation_enabled", "1")
    epochs = summary_row(page, "epochs")
    assert epochs.get_attribute("class") == "override"
    assert epochs.locator("mark").inner_text() == "5"
    assert "preset: 2" in epochs.locator("dd").inner_text()
    assert summary_row(page, "augmentation.enabled").locator("mark").inner_text() == "Yes"
    assert page.locator("#config-summary-list .override").count() == 2
    assert page.locator("#id_epochs").input_value() == "5"

    # Another preset: its values, the user's overrides kept, and a note for the dataset.
    page.select_option("#id_preset", "strong_breast")
    assert page.locator("#id_batch_size").get_attribute("placeholder") == "32"
    assert "preset: 60" in summary_row(page, "epochs").locator("dd").inner_text()
    assert summary_row(page, "epochs").locator("mark").inner_text() == "5"
    assert summary_row(page, "imbalance").locator("dd").inner_text() == "Class weights"
    note = page.locator("#preset-note")
    assert note.is_visible()
    assert "made for breastmnist" in note.inner_text() and "looks like bloodmnist" in note.inner_text()

    page.fill("#id_epochs", "")
    assert summary_row(page, "epochs").get_attribute("class") is None
    assert summary_row(page, "epochs").locator("dd").inner_text() == "60"
    assert page.locator("#config-summary-list .override").count() == 1
    assert blocked == []
