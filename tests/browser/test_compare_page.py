"""Comparing two registered models in a real browser: table, sorting, matrices and curves."""

from __future__ import annotations

import re

import pytest

from classifier import services_registry
from tests.classifier.test_registry import register_model, saved_model_file
from tests.factories import PASSWORD, DatasetFactory, UserFactory, medmnist_arrays, npz_bytes

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def evaluated_models(settings, tmp_path, published_checksums):
    settings.MODEL_EVALUATION_BOOTSTRAP = 100
    # Recognised as the official BloodMNIST (its published references are compared against).
    published_checksums("bloodmnist.npz", npz_bytes(medmnist_arrays()))
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    owner = UserFactory(username="blair")
    dataset = DatasetFactory(owner=owner, name="BloodMNIST", filename="bloodmnist.npz")
    models = []
    for seed, name in ((0, "blood-compact"), (1, "blood-compact-b")):
        history = [{"epoch": e, "loss": 1.3 - 0.2 * e, "val_loss": 1.2 - 0.1 * e - seed / 10,
                    "accuracy": 0.3 + 0.1 * e, "val_accuracy": 0.35 + 0.08 * e + seed / 20}
                   for e in range(1, 6)]
        if seed == 1:  # an ensemble of two members: epochs 1-2 and 3-5 are separate runs
            history = [{**entry, "member": 1 if entry["epoch"] <= 2 else 2} for entry in history]
        model = register_model(dataset, owner, saved_model_file(tmp_path, seed=seed), name=name,
                               history=history)
        services_registry.model_version_evaluate(model_version=model)
        model.refresh_from_db()
        models.append(model)
    return dataset, models


def test_two_models_compared_from_the_models_page_show_rows_matrices_and_curves(
        page, live_server, login, evaluated_models, tmp_path):
    dataset, models = evaluated_models
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    login(page, live_server, "blair", PASSWORD)

    page.goto(f"{live_server.url}/models/?dataset={dataset.pk}")
    for model in models:
        page.check(f"input[name=models][value='{model.pk}']")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/models/compare/\?"))

    table = page.locator("#compare-table")
    measured = table.locator("tbody tr.measured")
    assert measured.count() == 2
    assert sorted(measured.locator("td:first-child").all_inner_texts()) == sorted(
        str(m) for m in models)
    references = table.locator("tbody tr.reference td:first-child").all_inner_texts()
    assert [text.replace("\u00a0", " ").strip() for text in references] == [
        "Report: Novel DNN, 95% (Table 2) report", "Report: Novel DNN, 85% (Table 2) report",
        "Report: ResNet50 (Table 1) report"]
    first = table.locator(f"tr[data-model='{models[0].pk}'] td").all_inner_texts()
    headers = table.locator("thead th").all_inner_texts()
    assert first[headers.index("Accuracy")] == f"{models[0].metrics['accuracy']:.4f}"

    # Both confusion matrices: 3x3 counts adding up to the 12 test images.
    matrices = page.locator("table.confusion")
    assert matrices.count() == 2
    for index, model in enumerate(models):
        cells = matrices.nth(index).locator("tbody td").all_inner_texts()
        assert [int(c) for c in cells] == [n for row in model.metrics["confusion_matrix"] for n in row]
        assert sum(int(c) for c in cells) == 12

    # Sorting by accuracy puts the report's 0.95 first and keeps the values in order.
    page.click("#compare-table thead th:has-text('Accuracy')")
    column = headers.index("Accuracy")
    values = [float(v) for v in table.locator(f"tbody tr td:nth-child({column + 1})")
              .evaluate_all("cells => cells.map(c => c.dataset.sort)")]
    assert values == sorted(values, reverse=True) and values[0] == 0.95
    assert table.locator("thead th").nth(column).get_attribute("aria-sort") == "descending"

    # One curve per model, drawn by compare.js from the models' histories; the ensemble's
    # members are separate lines, not joined across members.
    assert page.locator("#curves polyline").count() == 3
    ensemble = page.locator(f"#curves polyline[data-model='{models[1]}']")
    assert [line.get_attribute("points").count(",") for line in ensemble.all()] == [2, 3]
    assert page.locator("#curve-legend span").count() == 2
    assert page.locator("#mcnemar-table tbody tr").count() == 2
    assert blocked == []
    page.screenshot(path=str(tmp_path / "compare-page.png"), full_page=True)
