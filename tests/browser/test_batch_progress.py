"""The batch job page in a real browser: its bar moves through reading and classifying without
a reload (the API side is in tests/training/test_inference_progress.py)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.factories import PASSWORD, ModelVersionFactory, UserFactory
from training.models import InferenceJob

Status = InferenceJob.Status


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_job_page_moves_its_bar_through_reading_and_classifying_without_a_reload(
        page, live_server, login):
    user = UserFactory(username="vera")
    model = ModelVersionFactory(owner=user, name="tiny-cnn")
    job = InferenceJob.objects.create(
        owner=user, model_version=model, source=InferenceJob.Source.UPLOAD, input_name="ward.zip",
        total=200, status=Status.RUNNING, phase="reading", read=100, deliveries=1,
        started_at=timezone.now(), heartbeat_at=timezone.now())
    login(page, live_server, "vera", PASSWORD)
    page.goto(f"{live_server.url}/inference/{job.pk}/")
    page.evaluate("() => { window.sameDocument = true; }")  # a reload would lose the mark
    label = page.locator("#inf-progress .label")
    phase = page.locator("#inf-phase")
    assert label.inner_text() == "25%"
    assert phase.inner_text() == "Reading images: 100 of 200"

    def shown(percent: int, text: str) -> None:
        page.wait_for_function(
            "([pct, text]) => document.querySelector('#inf-progress .label').textContent === pct"
            " && document.getElementById('inf-phase').textContent === text",
            arg=[f"{percent}%", text])
        bar = page.locator("#inf-progress .bar").evaluate("bar => bar.style.width")
        assert bar == f"{percent}%"
        assert page.locator("#inf-progress").get_attribute("aria-valuenow") == str(percent)

    InferenceJob.objects.filter(pk=job.pk).update(read=150)
    shown(38, "Reading images: 150 of 200")
    InferenceJob.objects.filter(pk=job.pk).update(read=200, phase="predicting", done=100)
    shown(75, "Classifying: 100 of 200")
    assert page.locator("#inf-done").inner_text() == "100"
    InferenceJob.objects.filter(pk=job.pk).update(
        status=Status.SUCCEEDED, phase="", done=200, finished_at=timezone.now(),
        summary={"adenoma": 200})
    page.wait_for_function("() => document.getElementById('inf-status').textContent === 'Succeeded'")
    assert label.inner_text() == "100%"
    assert phase.is_hidden()
    assert page.evaluate("() => window.sameDocument") is True
