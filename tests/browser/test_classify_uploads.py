"""The classify page in a real browser: files it cannot show, files too large, files dropped."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image

from classifier import services
from classifier.models import Prediction
from medml import infer
from medml.architectures import build_model
from tests.factories import PASSWORD, DatasetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/predictions/"


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    yield
    infer.clear_predictor_cache()


@pytest.fixture
def tiny_model(tmp_path):
    user = UserFactory(username="vera")
    dataset = DatasetFactory(owner=user, name="Tiny set")
    keras.utils.set_random_seed(0)
    path = tmp_path / "tiny.keras"
    build_model("compact_cnn", input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                width=4).save(path)
    return services.model_version_register(name="tiny", architecture="compact_cnn",
                                           dataset=dataset, owner=user, artifact_path=path,
                                           config={})


@pytest.fixture
def classify_page(page, live_server, login, tiny_model):
    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    return page


def image_file(folder, name: str, image_format: str, side: int = 28):
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    path = folder / name
    path.write_bytes(buffer.getvalue())
    return path


def test_a_tiff_is_classified_with_a_note_where_the_browser_cannot_show_it(classify_page, tmp_path):
    page = classify_page
    page.set_input_files("#id_images", str(image_file(tmp_path, "scan.tif", "TIFF")))
    # The browser shows no TIFF: the chosen file is listed with a note, not a broken icon.
    page.locator("#selected-files li .no-preview").wait_for()
    page.click("#predict-button")

    result = page.locator("#results .result")
    result.wait_for()
    result.locator(".result-images .no-preview").wait_for()
    assert result.locator("img.upload").count() == 0
    assert result.locator("img.gradcam").count() == 1  # what the model saw, with its heatmap
    assert Prediction.objects.get().image_content_type == "image/tiff"

    # A refused request leaves no earlier answer on the page, as if it belonged to it.
    (tmp_path / "notes.png").write_bytes(b"not an image")
    page.set_input_files("#id_images", str(tmp_path / "notes.png"))
    page.click("#predict-button")
    page.locator("#classify-errors li").first.wait_for()
    assert page.locator("#results .result").count() == 0


def test_a_file_over_the_size_limit_is_refused_before_it_is_sent(page, live_server, login,
                                                                tiny_model, settings, tmp_path):
    settings.PREDICTION_MAX_BYTES = 1000
    big = image_file(tmp_path, "big.png", "PNG", side=64)
    sent = []
    page.on("request", lambda request: sent.append(request.url) if URL in request.url else None)
    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/classify/")
    hint = page.locator("#drop-zone").inner_text().replace("\xa0", " ")
    assert "up to 16 images of 1000 bytes each" in hint

    page.set_input_files("#id_images", str(big))
    page.click("#predict-button")

    errors = page.locator("#classify-errors li")
    errors.first.wait_for()
    shown = f"{big.stat().st_size / 1024:.1f} KB"
    assert errors.all_inner_texts() == [
        f"big.png: the file is {shown}; the limit is 1000 bytes per image"]
    assert page.locator("#classify-status").inner_text() == "Not sent; nothing was stored."
    assert sent == [] and Prediction.objects.count() == 0


def test_files_dropped_beside_the_drop_zone_are_taken_instead_of_replacing_the_page(classify_page):
    page = classify_page
    outcome = page.evaluate(
        """() => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array([1, 2, 3])], "beside.png", {type: "image/png"}));
            const options = {dataTransfer: transfer, bubbles: true, cancelable: true};
            const zone = document.getElementById("drop-zone");
            // Over the zone, then over its link: still over the zone.
            zone.dispatchEvent(new DragEvent("dragover", options));
            zone.dispatchEvent(new DragEvent("dragleave", {...options,
                relatedTarget: zone.querySelector("label")}));
            const highlighted = zone.classList.contains("dragging");
            // Dropped on the page's heading, beside the zone: the default would open the file.
            const heading = document.querySelector("h1");
            const overAllowed = heading.dispatchEvent(new DragEvent("dragover", options));
            const dropAllowed = heading.dispatchEvent(new DragEvent("drop", options));
            return {highlighted, overAllowed, dropAllowed};
        }"""
    )
    assert outcome == {"highlighted": True, "overAllowed": False, "dropAllowed": False}
    assert page.locator("#selected-files li span:not(.no-preview)").inner_text() == "beside.png"
