"""The classify page in a real browser: upload, choose a model, predict, read the result."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from classifier import selectors, services
from classifier.models import Prediction
from medml import infer
from medml.architectures import build_model
from tests.factories import PASSWORD, DatasetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

BLOOD_FILE = Path(settings.MEDMNIST_DIR) / "bloodmnist.npz"
# A few thousand images and one epoch: enough for a model that is right, and sure, about some
# test images. The test then uploads the one it is surest about and right on, so the page's
# answer is known without depending on how good the model is overall.
TRAIN_IMAGES = 4000


@pytest.fixture
def csp_errors(page) -> list[str]:
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    return blocked


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    yield
    infer.clear_predictor_cache()


@pytest.fixture
def user():
    return UserFactory(username="vera")


@pytest.fixture
def blood_model(user, tmp_path):
    """BloodMNIST imported, a small model trained on part of it and registered, and the test
    image that model classifies correctly with the highest confidence."""
    if not BLOOD_FILE.is_file():
        pytest.skip(f"{BLOOD_FILE} is not available")
    dataset, _ = services.builtin_dataset_import(flag="bloodmnist", download=False)
    arrays = selectors.dataset_arrays(dataset=dataset)
    keras.utils.set_random_seed(0)
    model = build_model("blood_cnn_85", input_shape=dataset.image_shape, num_classes=dataset.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(arrays.images("train")[:TRAIN_IMAGES], arrays.labels("train")[:TRAIN_IMAGES],
              epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "blood.keras"
    model.save(path)
    registered = services.model_version_register(
        name="blood-quick", architecture="blood_cnn_85", dataset=dataset, owner=user,
        artifact_path=path, config={}, val_metrics={"accuracy": 0.5},
    )

    images, labels = arrays.images("test"), arrays.labels("test")
    probs = model.predict(images, batch_size=512, verbose=0)
    correct = np.flatnonzero(probs.argmax(axis=1) == labels)
    assert len(correct) > 0, "the quickly trained model got no test image right"
    chosen = int(correct[np.argmax(probs[correct].max(axis=1))])
    png = tmp_path / "blood-cell.png"
    Image.fromarray(images[chosen]).save(png)
    return {
        "dataset": dataset, "model": registered, "png": png,
        "label": dataset.class_names[int(labels[chosen])],
        "probabilities": probs[chosen],
    }


def test_a_user_uploads_a_blood_cell_image_and_sees_its_class_probabilities_and_heatmap(
    page, live_server, login, blood_model, csp_errors, tmp_path
):
    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    page.click("nav >> text=Classify")  # the nav link leads here
    assert page.url == f"{live_server.url}/classify/"

    dataset, model = blood_model["dataset"], blood_model["model"]
    group = page.locator(f'optgroup[label="{dataset.name} models"]')
    assert group.locator("option").all_inner_texts()[0].startswith(f"{dataset.name}: dataset default")
    page.set_input_files("#id_images", str(blood_model["png"]))
    page.select_option("#id_model", f"model:{model.pk}")
    page.click("#predict-button")

    result = page.locator("#results .result")
    result.wait_for()
    assert result.locator(".predicted-label").inner_text() == blood_model["label"]
    rows = result.locator(".probabilities tr")
    assert rows.count() == 8
    shown = {}
    for i in range(8):
        name = rows.nth(i).locator("th").inner_text()
        shown[name] = float(rows.nth(i).locator(".probability").inner_text().rstrip("%"))
    assert list(shown) == dataset.class_names
    expected = {name: round(100 * float(p), 1) for name, p in
                zip(dataset.class_names, blood_model["probabilities"], strict=True)}
    assert shown == pytest.approx(expected, abs=0.11)
    assert f"{model.name} v{model.version}" in result.locator(".model-used").inner_text()
    heatmap = result.locator("img.gradcam")
    page.wait_for_function("img => img.complete && img.naturalWidth === 224", arg=heatmap.element_handle())
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert Prediction.objects.get().predicted_label == blood_model["label"]
    assert csp_errors == []

    screenshots = Path(os.environ.get("MEDPLATFORM_SCREENSHOT_DIR", tmp_path))
    page.screenshot(path=str(screenshots / "classify-page.png"), full_page=True)

    # The prediction is in the history, with its stored image, and can be deleted there.
    page.click("text=Prediction history")
    row = page.locator("#prediction-table tbody tr")
    assert row.count() == 1
    assert row.locator("td.label").inner_text() == blood_model["label"]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#prediction-table img.thumb')]"
        ".every(img => img.complete && img.naturalWidth === 28)"
    )
    page.screenshot(path=str(screenshots / "prediction-history.png"), full_page=True)
    stored = Path(settings.MEDIA_ROOT) / Prediction.objects.get().image.name
    assert stored.is_file()
    questions = []

    def answer(dialog, accept):
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))  # Cancel keeps it
    row.locator("button", has_text="Delete").click()
    assert Prediction.objects.count() == 1 and row.count() == 1
    page.once("dialog", lambda dialog: answer(dialog, True))
    with page.expect_navigation():
        row.locator("button", has_text="Delete").click()
    assert len(questions) == 2 and questions[0].startswith("Delete this prediction of")
    empty = page.locator("#prediction-table tbody tr")
    assert empty.inner_text().startswith("No predictions.")
    assert empty.locator("a").get_attribute("href") == "/classify/"
    assert Prediction.objects.count() == 0
    assert not stored.exists()
    assert csp_errors == []


def test_a_dropped_image_is_classified_with_the_datasets_default_model(
    page, live_server, login, blood_model, csp_errors
):
    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    encoded = base64.b64encode(blood_model["png"].read_bytes()).decode()
    # What the browser does when a file is dragged from the desktop onto the drop zone.
    page.evaluate(
        """([data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            const zone = document.getElementById("drop-zone");
            const options = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", options));
            zone.dispatchEvent(new DragEvent("drop", options));
        }""",
        [encoded],
    )
    assert page.locator("#selected-files li").inner_text() == "dropped.png"
    page.select_option("#id_model", f"dataset:{blood_model['dataset'].pk}")
    page.click("#predict-button")

    result = page.locator("#results .result")
    result.wait_for()
    assert result.locator(".predicted-label").inner_text() == blood_model["label"]
    assert "blood-quick v1" in result.locator(".model-used").inner_text()
    assert csp_errors == []


def test_a_file_that_is_not_an_image_shows_the_reason_and_stores_nothing(
    page, live_server, login, user, tmp_path, csp_errors
):
    dataset = DatasetFactory(owner=user, name="Tiny set")
    keras.utils.set_random_seed(0)
    path = tmp_path / "tiny.keras"
    build_model("compact_cnn", input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                width=4).save(path)
    services.model_version_register(name="tiny", architecture="compact_cnn", dataset=dataset,
                                    owner=user, artifact_path=path, config={})
    fake = tmp_path / "report.png"
    fake.write_bytes(b"this is a text file with a picture's name")
    good = io.BytesIO()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(good, format="PNG")
    (tmp_path / "good.png").write_bytes(good.getvalue())

    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    page.set_input_files("#id_images", [str(tmp_path / "good.png"), str(fake)])
    page.click("#predict-button")

    errors = page.locator("#classify-errors li")
    errors.first.wait_for()
    assert errors.all_inner_texts() == ["report.png: not a PNG, JPEG, BMP or TIFF image"]
    assert "nothing was stored" in page.locator("#classify-status").inner_text()
    assert page.locator("#results .result").count() == 0
    assert Prediction.objects.count() == 0
    assert csp_errors == []
