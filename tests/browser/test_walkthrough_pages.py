"""The pages a user walks through, in a real browser at desktop and phone widths: what they are
told when a choice cannot be used, what a stopped batch job looks like, and what fits a phone."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from classifier import services_registry
from classifier.models import Prediction
from tests.factories import PASSWORD, DatasetFactory, ModelVersionFactory, UserFactory, png_bytes
from training.models import InferenceJob

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
LONG_NAME = "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)"
Status = InferenceJob.Status


@pytest.fixture
def catalog():
    """Sam (staff) with a dataset, two models under aliases, a removed alias, and predictions."""
    user = UserFactory(username="sam", is_staff=True)
    dataset = DatasetFactory(owner=user, name="Blood cells",
                             class_names=["basophil", LONG_NAME, "platelet"])
    first = ModelVersionFactory(dataset=dataset, owner=user, name="blood-compact")
    second = ModelVersionFactory(dataset=dataset, owner=user, name="blood-compact-b")
    services_registry.model_alias_promote(model_version=first, user=user, reason="best so far")
    services_registry.model_alias_promote(model_version=second, alias="staging", user=user,
                                          reason="trying it")
    services_registry.model_alias_promote(model_version=second, alias="canary", user=user,
                                          reason="trying it")
    services_registry.model_alias_remove(dataset=dataset, alias="canary", user=user,
                                         reason="not needed")
    for i in range(2):
        image = default_storage.save(f"uploads/cell-{i}.png", ContentFile(png_bytes((28, 28), seed=i)))
        Prediction.objects.create(
            owner=user, model_version=first, image=image, image_sha256="1" * 64,
            original_name=f"cell-{i}.png", predicted_index=1, predicted_label=LONG_NAME,
            probabilities={"basophil": 0.05, LONG_NAME: 0.9, "platelet": 0.05}, latency_ms=8.04)
    return {"user": user, "dataset": dataset, "models": [first, second]}


@pytest.fixture
def page_errors(page) -> list[str]:
    """Script errors of the page: there should be none."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def batch_job(catalog, **fields) -> InferenceJob:
    return InferenceJob.objects.create(
        owner=catalog["user"], model_version=catalog["models"][0],
        source=InferenceJob.Source.DATASET, dataset=catalog["dataset"], split="test", **fields)


# --- classify ------------------------------------------------------------------------------------


def test_choosing_files_says_at_once_which_are_too_large_and_a_new_choice_clears_that(
        page, live_server, login, catalog, settings, tmp_path, page_errors):
    settings.PREDICTION_MAX_BYTES = 1000
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(png_bytes((64, 64)))
    small.write_bytes(png_bytes((8, 8)))
    assert big.stat().st_size > 1000 > small.stat().st_size
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    status, errors = page.locator("#classify-status"), page.locator("#classify-errors li")

    page.set_input_files("#id_images", str(big))
    # Said when the file is chosen, not only once Predict is pressed.
    assert status.inner_text() == "1 image is too large to send; choose smaller ones."
    assert errors.all_inner_texts() == [
        f"big.png: the file is {big.stat().st_size / 1024:.1f} KB; the limit is 1000 bytes per image"]
    page.click("#predict-button")
    assert status.inner_text() == "Not sent; nothing was stored."

    # A new choice: the refusal of the previous one no longer stands beside it.
    page.set_input_files("#id_images", [str(small), str(small)])
    assert status.inner_text() == "2 images ready."
    assert errors.count() == 0
    assert page_errors == []


# --- prediction history --------------------------------------------------------------------------


def test_filters_that_cannot_be_applied_are_outlined_and_the_message_stays_readable_on_a_phone(
        page, live_server, login, catalog, page_errors):
    page.set_viewport_size(PHONE)
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/predictions/?model=zz&created_after=2026-02-05"
              "&created_before=2026-01-01")

    assert page.locator("#id_model").get_attribute("aria-invalid") == "true"
    assert page.locator("#id_created_before").get_attribute("aria-invalid") == "true"
    assert page.locator("#id_dataset").get_attribute("aria-invalid") is None
    note = page.locator("#prediction-table td.empty .empty-note")
    assert note.inner_text().startswith("No predictions match these filters. Correct the filters")
    # The table is wider than the phone and scrolls; its message must not scroll out of view.
    box = note.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page_errors == []


def test_each_history_row_names_what_its_delete_button_deletes(page, live_server, login, catalog):
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/predictions/")
    names = page.locator("#prediction-table button.danger").evaluate_all(
        "buttons => buttons.map((b) => b.getAttribute('aria-label'))")
    assert sorted(names) == ["Delete the prediction of cell-0.png",
                             "Delete the prediction of cell-1.png"]
    # The day and time of a prediction stay on one line.
    heights = page.locator("#prediction-table td.when").evaluate_all(
        "cells => cells.map((td) => td.getBoundingClientRect().height)")
    files = page.locator("#prediction-table td.file").evaluate_all(
        "cells => cells.map((td) => td.getBoundingClientRect().height)")
    assert heights == files


# --- model page: alias actions ---------------------------------------------------------------------


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, PHONE])
def test_each_alias_action_keeps_its_reason_box_beside_its_button_inside_the_card(
        page, live_server, login, catalog, viewport, page_errors):
    page.set_viewport_size(viewport)
    login(page, live_server, "sam", PASSWORD)
    first = catalog["models"][0]
    page.goto(f"{live_server.url}/models/{first.pk}/")

    card = page.locator("#aliases").bounding_box()
    forms = page.locator("#aliases form[action*='/aliases/']")
    assert forms.count() == 4  # roll back and remove, for production and staging
    for form in forms.all():
        reason, button = form.locator("input[name=reason]"), form.locator("button")
        r, b = reason.bounding_box(), button.bounding_box()
        # Both wholly inside the card, so that nothing has to be scrolled to, and on one line:
        # the box a reason is typed in is the one beside the button it goes with.
        for part in (r, b):
            assert part["x"] >= card["x"] and part["x"] + part["width"] <= card["x"] + card["width"], (
                form.get_attribute("action"), part, card)
        assert abs((r["y"] + r["height"] / 2) - (b["y"] + b["height"] / 2)) < 4
        assert r["x"] + r["width"] <= b["x"]
        assert reason.get_attribute("aria-label").startswith("reason for ")
    # The audit trail's day and time stay on one line.
    assert page.locator("#alias-changes td:first-child").evaluate_all(
        "cells => cells.map((td) => { const range = document.createRange();"
        " range.selectNodeContents(td); return range.getClientRects().length; })") == [1, 1, 1, 1]

    # Removing an alias asks first, then says what happened.
    staging = page.locator("#aliases form[action$='/aliases/staging/remove/']")
    staging.locator("input[name=reason]").fill("replaced")
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        staging.locator("button").click()
    assert questions and questions[0].startswith("Remove the alias staging of Blood cells?")
    assert "Removed staging of Blood cells" in page.locator(".messages").inner_text()
    assert page_errors == []


# --- batch jobs ---------------------------------------------------------------------------------


def test_a_failed_batch_job_says_where_it_stopped_and_its_bar_is_not_shown_as_running(
        page, live_server, login, catalog, page_errors):
    job = batch_job(catalog, status=Status.RUNNING, phase="reading", total=100, read=20)
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/inference/{job.pk}/")
    phase, bar = page.locator("#inf-phase"), page.locator("#inf-progress")
    assert phase.inner_text() == "Reading images: 20 of 100"
    assert "stopped" not in bar.get_attribute("class")

    # It fails while the page is open: the page follows without a reload.
    InferenceJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED, error="The zip holds a file that is not an image: notes.txt")
    page.wait_for_function("() => document.getElementById('inf-status').textContent === 'Failed'")
    assert phase.is_visible()
    assert phase.inner_text() == "Stopped while reading images: 20 of 100 read"
    assert "stopped" in bar.get_attribute("class").split()
    assert page.locator("#inference-delete-button").inner_text() == "Delete job and files"

    # And so it is when the page is opened afterwards.
    page.reload()
    assert phase.inner_text() == "Stopped while reading images: 20 of 100 read"
    assert "stopped" in bar.get_attribute("class").split()
    colour = page.locator("#inf-progress .bar").evaluate("bar => getComputedStyle(bar).backgroundColor")
    running = page.evaluate("""() => { const probe = document.createElement('div');
        probe.className = 'progress'; probe.innerHTML = '<div class="bar"></div>';
        document.body.appendChild(probe);
        return getComputedStyle(probe.firstChild).backgroundColor; }""")
    assert colour != running
    assert page_errors == []


def test_a_batch_job_deleted_elsewhere_is_said_on_its_open_page(page, live_server, login, catalog):
    job = batch_job(catalog, status=Status.RUNNING, phase="predicting", total=100, read=100, done=30)
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/inference/{job.pk}/")
    assert page.locator("#inf-phase").inner_text() == "Classifying: 30 of 100"

    InferenceJob.objects.filter(pk=job.pk).delete()
    notice = page.locator("#inf-connection")
    page.wait_for_function(
        "() => (document.getElementById('inf-connection') || {}).textContent"
        " && document.getElementById('inf-connection').textContent.includes('no longer exists')")
    assert notice.inner_text().startswith("This job no longer exists: it was deleted.")
    assert page.locator("#inf-phase").is_hidden()
    assert page.locator("#inference-delete-button").is_hidden()


def test_the_class_shares_of_a_batch_job_fit_a_phone(page, live_server, login, catalog):
    job = batch_job(catalog, status=Status.SUCCEEDED, total=12, read=12, done=12,
                    summary={"basophil": 3, LONG_NAME: 6, "platelet": 3})
    page.set_viewport_size(PHONE)
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/inference/{job.pk}/")
    page.wait_for_function("() => document.querySelectorAll('#inf-summary tbody tr').length === 3")
    # The long class name wraps: the Share column is not pushed out of its box.
    fit = page.locator("#inf-summary").evaluate(
        "table => ({table: table.getBoundingClientRect().right,"
        " box: table.parentElement.getBoundingClientRect().right})")
    assert fit["table"] <= fit["box"] + 0.5, fit
    assert page.locator("#inf-summary tbody tr").first.locator("td").nth(2).inner_text() == "50.0%"


def test_a_refused_batch_form_keeps_the_model_and_split_chosen(page, live_server, login, catalog,
                                                             tmp_path):
    model = catalog["models"][1]
    login(page, live_server, "sam", PASSWORD)
    page.goto(f"{live_server.url}/inference/")
    page.select_option("#id_model", str(model.pk))
    page.select_option("#id_split", "val")
    upload = tmp_path / "ward.npz"
    upload.write_bytes(b"not read: refused before")
    page.set_input_files("#id_file", str(upload))  # a split and a file: one of them, please
    with page.expect_navigation():
        page.click("#inference-button")

    assert page.locator("#inference-errors li").all_inner_texts() == [
        "choose either a split of the model's dataset or a file to upload"]
    assert page.locator("#id_model").input_value() == str(model.pk)
    assert page.locator("#id_split").input_value() == "val"
    assert page.locator("#file-again").inner_text() == "ward.npz was not kept: choose it again."
    assert not InferenceJob.objects.exists()


# --- decision threshold --------------------------------------------------------------------------


def test_a_threshold_set_for_any_target_can_be_chosen_again_and_cleared_from_the_page(
        page, live_server, login):
    # Targets set through the API take any value in (0, 1]: the page's field must accept 0.925
    # (a step of 0.01 made the browser refuse the form, its Clear button included).
    user = UserFactory(username="tess")
    breast = DatasetFactory(owner=user, name="Lesions", class_names=["malignant", "benign"],
                            class_counts={"train": [6, 6], "val": [3, 3], "test": [3, 3]})
    model = ModelVersionFactory(dataset=breast, owner=user, name="lesions", decision_threshold=0.3,
                                val_metrics={"operating_point": {
                                    "target_sensitivity": 0.925, "positive_class": 0,
                                    "positive_class_name": "malignant", "threshold": 0.3,
                                    "sensitivity": 0.93, "specificity": 0.8}})
    login(page, live_server, "tess", PASSWORD)
    page.goto(f"{live_server.url}/models/{model.pk}/")

    field = page.locator("#id_target")
    assert field.input_value() == "0.925"
    assert field.evaluate("input => input.checkValidity()")
    with page.expect_navigation():
        page.locator("#threshold button", has_text="Clear").click()
    assert "predicts the most probable class again" in page.locator(".messages").inner_text()
    model.refresh_from_db()
    assert model.decision_threshold is None
