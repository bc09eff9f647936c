"""The dataset import page, in a real browser: upload, progress, redirect and errors."""

from __future__ import annotations

import re

import pytest

from classifier.models import Dataset
from tests.factories import PASSWORD, UserFactory, medmnist_arrays, npz_bytes

pytestmark = pytest.mark.django_db(transaction=True)

CLASS_COUNTS = {"train": [9, 12, 9], "val": [3, 4, 3], "test": [2, 3, 5]}


@pytest.fixture
def csp_errors(page) -> list[str]:
    """What the browser blocked under the site's Content-Security-Policy, as it reports it."""
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    return blocked


@pytest.fixture
def signed_in(page, live_server, login, csp_errors):
    UserFactory(username="dana")
    login(page, live_server, "dana", PASSWORD)
    return page


def test_a_user_imports_an_npz_and_sees_its_class_balance(signed_in, live_server, tmp_path,
                                                          csp_errors):
    page = signed_in
    upload = tmp_path / "lesions.npz"
    upload.write_bytes(npz_bytes(medmnist_arrays(CLASS_COUNTS, size=28, channels=3)))

    page.goto(f"{live_server.url}/datasets/import/")
    stylesheet = page.request.get(f"{live_server.url}/static/css/site.css")
    assert stylesheet.ok
    assert "text/css" in stylesheet.headers["content-type"]
    # The stylesheet is applied, not only served: the top bar is dark.
    assert page.eval_on_selector(".topbar", "e => getComputedStyle(e).backgroundColor") == \
        "rgb(13, 27, 42)"
    page.set_input_files("#id_file", str(upload))
    page.fill("#id_name", "Lesions")
    page.fill("#id_class_names", "nevus, melanoma, keratosis")
    page.click("#import-button")
    page.wait_for_url(re.compile(r"/datasets/\d+/$"))

    dataset = Dataset.objects.get()
    assert page.url == f"{live_server.url}/datasets/{dataset.pk}/"
    assert dataset.owner.username == "dana"
    assert page.locator("h1").inner_text().startswith("Lesions")
    table = page.locator("#class-balance")
    header = table.locator("thead th").all_inner_texts()
    for index, name in enumerate(["nevus", "melanoma", "keratosis"]):
        cells = table.locator("tbody tr").nth(index).locator("td").all_inner_texts()
        assert cells[:2] == [str(index), name]
        for split, counts in CLASS_COUNTS.items():
            assert cells[header.index(split)] == str(counts[index]), (name, split)
    footer = table.locator("tfoot td").all_inner_texts()
    assert footer[header.index("total")] == "50"
    # The sample grid's images load (a broken image has no natural width).
    images = page.locator(".sample-grid img")
    assert images.count() == 24
    images.last.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.sample-grid img')]"
        ".every(img => img.complete && img.naturalWidth === 28)"
    )
    assert csp_errors == []
    page.screenshot(path=str(tmp_path / "dataset-page.png"), full_page=True)


def test_a_corrupt_upload_shows_the_reason_and_imports_nothing(signed_in, live_server, tmp_path,
                                                              csp_errors):
    page = signed_in
    upload = tmp_path / "broken.npz"
    upload.write_bytes(b"PK\x03\x04 truncated before anything useful")

    page.goto(f"{live_server.url}/datasets/import/")
    page.set_input_files("#id_file", str(upload))
    page.click("#import-button")

    errors = page.locator("#import-errors li")
    errors.first.wait_for()
    assert errors.count() == 1
    assert errors.first.inner_text().startswith("file: broken.npz: not a valid .npz file")
    assert page.locator("#import-status").inner_text() == "Import failed (400)."
    assert page.locator("#import-progress").is_hidden()
    assert page.locator("#import-button").is_enabled()
    assert page.url == f"{live_server.url}/datasets/import/"
    assert not Dataset.objects.exists()
    assert csp_errors == []
    page.screenshot(path=str(tmp_path / "import-error.png"), full_page=True)
