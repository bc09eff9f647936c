"""Layout in a real browser: pages fit a phone's width (wide tables scroll inside their box),
the navigation stays on screen, and a prediction's class names stay readable."""

from __future__ import annotations

import base64
import json

import pytest

from tests.factories import PASSWORD, DatasetFactory, ModelVersionFactory, UserFactory, png_bytes
from training.models import InferenceJob, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}
# BloodMNIST's longest class name: the one that broke table columns and the sample grid.
LONG_NAME = "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)"


@pytest.fixture
def catalog():
    user = UserFactory(username="nadia")
    dataset = DatasetFactory(owner=user, name="Blood cells",
                             class_names=["basophil", LONG_NAME, "platelet"])
    model = ModelVersionFactory(dataset=dataset, name="blood-cells-compact",
                                metrics={"accuracy": 0.8395, "roc_auc": 0.988})
    job = TrainingJob.objects.create(
        owner=user, dataset=dataset, config={"architecture": "compact_cnn", "epochs": 2},
        preset="smoke", total_epochs=2, name="compact_cnn on Blood cells (a long job name)",
        status=TrainingJob.Status.FAILED, error="out of memory",
    )
    batch = InferenceJob.objects.create(
        owner=user, model_version=model, source=InferenceJob.Source.DATASET, dataset=dataset, split="test",
        status="succeeded", total=12, done=12,
        summary={"basophil": 3, LONG_NAME: 6, "platelet": 3},
    )
    return {"user": user, "dataset": dataset, "model": model, "job": job, "batch": batch}


def overflow(page) -> dict:
    return page.evaluate("""() => ({
        scrollWidth: document.documentElement.scrollWidth,
        navRight: Math.max(...[...document.querySelectorAll('.topbar a, .topbar button')]
                               .map((el) => el.getBoundingClientRect().right)),
    })""")


def test_every_page_fits_a_phone_screen_and_wide_tables_scroll_in_their_box(
        page, live_server, login, catalog):
    page.set_viewport_size(PHONE)
    login(page, live_server, "nadia", PASSWORD)
    dataset, model, job, batch = (catalog[key] for key in ("dataset", "model", "job", "batch"))
    paths = ["/", "/datasets/", f"/datasets/{dataset.pk}/", "/datasets/import/", "/jobs/",
             "/jobs/new/", f"/jobs/{job.pk}/", "/models/", f"/models/{model.pk}/",
             "/classify/", "/predictions/", "/inference/", f"/inference/{batch.pk}/"]
    for path in paths:
        page.goto(f"{live_server.url}{path}")
        measured = overflow(page)
        assert measured["scrollWidth"] <= PHONE["width"], (path, measured)
        assert measured["navRight"] <= PHONE["width"], (path, measured)

    # The model table is wider than the phone: it scrolls inside its own box.
    page.goto(f"{live_server.url}/models/")
    box = page.locator("#model-table").evaluate(
        "table => { const box = table.parentElement;"
        " return {table: table.scrollWidth, box: box.clientWidth, scrolls: box.scrollWidth > box.clientWidth,"
        " overflowX: getComputedStyle(box).overflowX}; }")
    assert box["table"] > PHONE["width"]
    assert box["scrolls"] and box["overflowX"] == "auto", box


def test_the_batch_job_page_shows_each_class_share(page, live_server, login, catalog):
    login(page, live_server, "nadia", PASSWORD)
    page.goto(f"{live_server.url}/inference/{catalog['batch'].pk}/")
    page.wait_for_function(
        "() => document.querySelectorAll('#inf-summary tbody tr').length === 3")
    assert page.locator("#inf-summary thead").inner_text().split() == ["Class", "Images", "Share"]
    rows = [row.locator("td").all_inner_texts() for row in page.locator("#inf-summary tbody tr").all()]
    # Most frequent first, then by name, whatever the order the database keeps the summary in.
    assert rows == [[LONG_NAME, "6", "50.0%"], ["basophil", "3", "25.0%"], ["platelet", "3", "25.0%"]]


def fake_prediction(model) -> list[dict]:
    """What the predictions API answers for one image (the page only renders it)."""
    heatmap = "data:image/png;base64," + base64.b64encode(png_bytes((28, 28))).decode()
    probabilities = {"basophil": 0.05, LONG_NAME: 0.9, "platelet": 0.05}
    return [{
        "id": 1, "original_name": "cell.png", "predicted_label": LONG_NAME,
        "probabilities": probabilities, "image_url": heatmap, "gradcam": heatmap,
        "latency_ms": 8.04, "uncertainty": None, "warnings": [],
        "model": {"name": model.name, "version": 1, "architecture": "compact_cnn",
                  "dataset_name": "Blood cells", "class_names": list(probabilities)},
    }]


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 850}, PHONE])
def test_a_long_predicted_class_name_leaves_the_probability_table_readable(
        page, live_server, login, catalog, tmp_path, viewport):
    page.set_viewport_size(viewport)
    login(page, live_server, "nadia", PASSWORD)
    page.route("**/api/v1/predictions/", lambda route: route.fulfill(
        status=201, content_type="application/json",
        body=json.dumps(fake_prediction(catalog["model"]))))
    image = tmp_path / "cell.png"
    image.write_bytes(png_bytes((28, 28)))

    page.goto(f"{live_server.url}/classify/")
    page.set_input_files("#id_images", str(image))
    page.click("#predict-button")
    page.wait_for_selector("#results .probabilities")

    widths = page.locator(".probabilities th").evaluate_all(
        "cells => cells.map((th) => th.getBoundingClientRect().width)")
    # Wide enough for whole words: a column of 3 letters a line made the name unreadable.
    assert min(widths) >= 100, widths
    assert overflow(page)["scrollWidth"] <= viewport["width"]
    assert page.locator(".result-images img.gradcam").evaluate(
        "img => getComputedStyle(img).imageRendering") == "pixelated"
