"""The training pages: job list, launch form, job page, cancel and retry buttons."""

from __future__ import annotations

import json
import re

import pytest
from pytest_django.asserts import assertContains, assertNotContains, assertRedirects

from tests.factories import DatasetFactory, UserFactory
from training.models import TrainingJob

Status = TrainingJob.Status


@pytest.fixture
def browser_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def other_user(db):
    return UserFactory(username="piet")


def job_of(user, dataset, **fields) -> TrainingJob:
    return TrainingJob.objects.create(
        owner=user, dataset=dataset, config={"architecture": "compact_cnn", "epochs": 2},
        preset="smoke", total_epochs=2, name=fields.pop("name", f"{user.username}'s run"),
        **fields,
    )


def messages_on(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.mark.parametrize("path", ["/jobs/", "/jobs/new/", "/jobs/1/"])
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assertRedirects(response, f"/login/?next={path}", fetch_redirect_response=False)


def test_the_job_list_shows_the_users_jobs_only(browser_client, owner, other_user, dataset):
    mine = job_of(owner, dataset, name="my blood run")
    theirs = job_of(other_user, DatasetFactory(owner=other_user), name="their secret run")
    response = browser_client.get("/jobs/")
    assert response.status_code == 200
    assertContains(response, f'href="/jobs/{mine.pk}/"')
    assertContains(response, "my blood run")
    assertNotContains(response, "their secret run")
    assertNotContains(response, f'data-job="{theirs.pk}"')


def test_the_job_list_offers_cancel_for_active_jobs_and_retry_for_failed_ones(
        browser_client, owner, dataset):
    running = job_of(owner, dataset, status=Status.RUNNING)
    failed = job_of(owner, dataset, status=Status.FAILED)
    response = browser_client.get("/jobs/")
    assertContains(response, f'action="/jobs/{running.pk}/cancel/"')
    assertNotContains(response, f'action="/jobs/{running.pk}/retry/"')
    assertContains(response, f'action="/jobs/{failed.pk}/retry/"')
    assertNotContains(response, f'action="/jobs/{failed.pk}/cancel/"')


def test_the_launch_form_offers_the_users_datasets_and_the_presets(browser_client, dataset,
                                                                  other_user):
    theirs = DatasetFactory(owner=other_user, name="Their private set")
    builtin = DatasetFactory(builtin=True, name="Shared builtin")
    response = browser_client.get("/jobs/new/")
    assert response.status_code == 200
    assertContains(response, f'<option value="{dataset.pk}">Tiny blood</option>', html=True)
    assertContains(response, f'<option value="{builtin.pk}">Shared builtin</option>', html=True)
    assertNotContains(response, "Their private set")
    assertNotContains(response, f'<option value="{theirs.pk}">', html=False)
    assertContains(response, '<option value="smoke">Smoke test</option>', html=True)
    assertContains(response, "<code>report_blood_cnn_95</code>")
    assertContains(response, '<option value="compact_cnn_wide">', html=False)


def test_the_launch_form_preselects_the_dataset_in_the_address(browser_client, dataset):
    response = browser_client.get(f"/jobs/new/?dataset={dataset.pk}")
    assertContains(response, f'<option value="{dataset.pk}" selected>Tiny blood</option>',
                   html=True)


def field_tag(response, name: str) -> str:
    """The launch form's ``<input>`` or ``<select>…</select>`` for field ``name``."""
    page = response.content.decode()
    match = (re.search(rf'<input [^>]*name="{name}"[^>]*>', page)
             or re.search(rf'<select name="{name}".*?</select>', page, re.S))
    assert match, f"no field {name} on the page"
    return match.group(0)


def test_the_launch_form_shows_the_chosen_presets_values_as_placeholders(browser_client):
    response = browser_client.get("/jobs/new/?preset=fast_cpu_blood")
    assertContains(response, '<option value="fast_cpu_blood" selected>', html=False)
    assert 'placeholder="18"' in field_tag(response, "epochs")
    assert 'placeholder="0.003"' in field_tag(response, "learning_rate")
    assert 'placeholder="0.0001"' in field_tag(response, "weight_decay")
    assert 'placeholder="0.05"' in field_tag(response, "label_smoothing")
    assert 'placeholder="none"' in field_tag(response, "early_stopping_patience")
    assert '<option value="" selected>(preset: AdamW)</option>' in field_tag(response, "optimizer")
    assert '<option value="" selected>(preset: Yes)</option>' in field_tag(response, "rotate90")
    assert ('<option value="" selected>(preset: Compact CNN)</option>'
            in field_tag(response, "architecture"))
    # The choices themselves are unchanged.
    assert '<option value="adam">Adam</option>' in field_tag(response, "optimizer")


def test_without_a_preset_the_placeholders_are_the_defaults(browser_client):
    from medml.config import TrainConfig

    response = browser_client.get("/jobs/new/")
    defaults = TrainConfig()
    assert f'placeholder="{defaults.epochs}"' in field_tag(response, "epochs")
    assert f'placeholder="{defaults.batch_size}"' in field_tag(response, "batch_size")
    assert '<option value="" selected>(default: Adam)</option>' in field_tag(response, "optimizer")


def test_a_form_shown_again_after_an_error_keeps_the_submitted_presets_placeholders(
        browser_client, dataset):
    response = browser_client.post("/jobs/new/", {"dataset": dataset.pk, "preset": "strong_breast",
                                                  "epochs": "0"})
    assert response.status_code == 200
    assert 'placeholder="32"' in field_tag(response, "batch_size")
    assert 'placeholder="15"' in field_tag(response, "rotation_range")
    assert ('<option value="" selected>(preset: Class weights)</option>'
            in field_tag(response, "imbalance"))


def test_the_page_gives_its_script_each_presets_config_as_the_server_resolves_it(
        browser_client, dataset):
    from medml.config import PRESETS, TrainConfig, resolve_preset

    response = browser_client.get("/jobs/new/")
    data = json.loads(re.search(r'<script id="launch-data" type="application/json">(.*?)</script>',
                                response.content.decode(), re.S).group(1))
    assert set(data["presets"]) == {"", *PRESETS}
    assert data["presets"][""]["config"] == TrainConfig().to_dict()
    for name in PRESETS:
        assert data["presets"][name]["config"] == resolve_preset(name).to_dict()
        assert data["presets"][name]["hint"] == PRESETS[name].dataset_hint
    settings = {setting["key"]: setting for setting in data["settings"]}
    assert settings["augmentation.rotate90"]["field"] == "rotate90"
    assert settings["augmentation.rotate90"]["label"] == "90° rotations"
    assert settings["tta"]["field"] is None
    assert data["datasets"] == {str(dataset.pk): "bloodmnist"}  # "Tiny blood"
    assertContains(response, "/static/js/job_new.js")


def test_a_preset_made_for_another_dataset_shows_a_note(browser_client, dataset, owner):
    breast = DatasetFactory(owner=owner, name="Breast scans")
    mismatch = browser_client.get(f"/jobs/new/?dataset={dataset.pk}&preset=strong_breast")
    assertContains(mismatch, '<p class="preset-note" id="preset-note" role="status">This preset was '
                             'made for breastmnist, and the chosen dataset looks like bloodmnist',
                   html=False)
    for query in (f"dataset={breast.pk}&preset=strong_breast", f"dataset={dataset.pk}&preset=smoke"):
        match = browser_client.get(f"/jobs/new/?{query}")
        assertContains(match, '<p class="preset-note" id="preset-note" role="status" hidden></p>',
                       html=False)


def test_launching_with_the_smoke_preset_queues_a_job_and_opens_its_page(
        browser_client, owner, dataset, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = browser_client.post("/jobs/new/", {
            "dataset": dataset.pk, "preset": "smoke", "epochs": "3", "name": "quick check",
        })
    job = TrainingJob.objects.get()
    assertRedirects(response, f"/jobs/{job.pk}/", fetch_redirect_response=False)
    assert len(callbacks) == 1  # queued for a worker
    assert job.owner == owner and job.dataset == dataset
    assert job.preset == "smoke" and job.name == "quick check"
    assert job.config["epochs"] == 3 and job.config["batch_size"] == 32
    page = browser_client.get(response.url)
    assert f"Queued training job #{job.pk}." in messages_on(page)


def test_a_value_the_form_refuses_is_shown_and_nothing_is_queued(browser_client, dataset):
    response = browser_client.post("/jobs/new/", {"dataset": dataset.pk, "preset": "smoke",
                                                  "epochs": "0"})
    assert response.status_code == 200
    assert response.context["form"].errors["epochs"]
    assertContains(response, '<div class="error" id="id_epochs_error">Ensure this value is greater '
                             'than or equal to 1.</div>', html=True)
    assert not TrainingJob.objects.exists()


def test_a_config_the_trainer_refuses_is_shown_next_to_its_field_and_nothing_is_queued(
        browser_client, dataset):
    response = browser_client.post("/jobs/new/", {
        "dataset": dataset.pk, "preset": "smoke", "two_phase": "1", "phase1_epochs": "5",
    })
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "less than epochs (2)" in errors["phase1_epochs"][0]
    assert "enable augmentation" in errors["two_phase"][0]
    assertContains(response, "less than epochs (2), got 5.")
    assert not TrainingJob.objects.exists()


def test_the_job_page_shows_the_job(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING, current_epoch=1,
                 log=["12:00:00 training compact_cnn on Tiny blood (40 training images)"])
    response = browser_client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    assertContains(response, f"Job #{job.pk}: olga&#x27;s run")
    assertContains(response, '<span id="job-status" class="status status-running">Running</span>',
                   html=True)
    assertContains(response, f'data-url="/api/v1/training-jobs/{job.pk}/"')
    assertContains(response, "training compact_cnn on Tiny blood (40 training images)")
    assertContains(response, f'href="/datasets/{dataset.pk}/"')
    assertContains(response, "/static/js/job_detail.js")


def test_another_users_job_page_is_not_found(browser_client, other_user):
    theirs = job_of(other_user, DatasetFactory(owner=other_user))
    assert browser_client.get(f"/jobs/{theirs.pk}/").status_code == 404


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_another_users_job_cannot_be_cancelled_or_retried(browser_client, other_user, action):
    theirs = job_of(other_user, DatasetFactory(owner=other_user), status=Status.FAILED)
    assert browser_client.post(f"/jobs/{theirs.pk}/{action}/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == Status.FAILED and not theirs.cancel_requested
    assert TrainingJob.objects.count() == 1


def test_cancel_and_retry_only_accept_posts(browser_client, owner, dataset):
    job = job_of(owner, dataset)
    assert browser_client.get(f"/jobs/{job.pk}/cancel/").status_code == 405
    assert browser_client.get(f"/jobs/{job.pk}/retry/").status_code == 405
    job.refresh_from_db()
    assert job.status == Status.QUEUED


def test_the_cancel_button_cancels_a_queued_job(browser_client, owner, dataset):
    job = job_of(owner, dataset)
    response = browser_client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assertRedirects(response, f"/jobs/{job.pk}/")
    assert f"Cancelling job #{job.pk}." in messages_on(response)
    job.refresh_from_db()
    assert job.status == Status.CANCELLED


def test_the_cancel_button_on_the_list_returns_to_the_list(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING)
    response = browser_client.post(f"/jobs/{job.pk}/cancel/", {"next": "list"})
    assertRedirects(response, "/jobs/", fetch_redirect_response=False)
    job.refresh_from_db()
    assert job.status == Status.RUNNING and job.cancel_requested


def test_cancelling_a_finished_job_shows_why_it_cannot(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.SUCCEEDED)
    response = browser_client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assertRedirects(response, f"/jobs/{job.pk}/")
    assert messages_on(response) == [
        f"job #{job.pk} is succeeded; only queued or running jobs cancel"]
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED


def test_the_retry_button_queues_the_next_attempt_and_opens_it(
        browser_client, owner, dataset, django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=Status.CANCELLED)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = browser_client.post(f"/jobs/{job.pk}/retry/")
    new = TrainingJob.objects.exclude(pk=job.pk).get()
    assertRedirects(response, f"/jobs/{new.pk}/", fetch_redirect_response=False)
    assert len(callbacks) == 1
    assert new.attempt == 2 and new.retry_of == job
    page = browser_client.get(response.url)
    assert f"Queued job #{new.pk} (attempt 2)." in messages_on(page)
    assertContains(page, f'retry of <a href="/jobs/{job.pk}/">#{job.pk}</a>')
    # The retried job now links to its retry instead of offering a second one.
    for url in (f"/jobs/{job.pk}/", "/jobs/"):
        listed = browser_client.get(url)
        assertContains(listed, f'<a href="/jobs/{new.pk}/"')
        assertNotContains(listed, f'action="/jobs/{job.pk}/retry/"')
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = browser_client.post(f"/jobs/{job.pk}/retry/", follow=True)
    assert not callbacks and TrainingJob.objects.count() == 2
    assert f"already retried as job #{new.pk}" in messages_on(again)[0]


def test_retrying_a_succeeded_job_shows_why_it_cannot(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.SUCCEEDED)
    response = browser_client.post(f"/jobs/{job.pk}/retry/", follow=True)
    assertRedirects(response, f"/jobs/{job.pk}/")
    assert messages_on(response) == [
        f"job #{job.pk} is succeeded; only failed or cancelled jobs retry"]
    assert TrainingJob.objects.count() == 1


def test_every_description_a_launch_form_field_points_to_is_on_the_page(browser_client, dataset):
    response = browser_client.post("/jobs/new/", {"dataset": dataset.pk, "preset": "smoke",
                                                  "epochs": "0", "ensemble_size": "11"})
    page = response.content.decode()
    described = re.findall(r'aria-describedby="([^"]+)"', page)
    ids = [target for value in described for target in value.split()]
    assert {"id_epochs_error", "id_ensemble_size_helptext", "id_ensemble_size_error"} <= set(ids)
    for target in ids:
        assert f'id="{target}"' in page, f"{target} is described by nothing on the page"
    assertContains(response, '<div class="error" id="id_ensemble_size_error">Ensure this value is '
                             'less than or equal to 10.</div>', html=True)


def test_the_job_page_renders_an_accessible_progress_bar_at_the_jobs_progress(
        browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING, current_epoch=1, batch_progress=0.5)
    response = browser_client.get(f"/jobs/{job.pk}/")
    assertContains(response, '<div class="progress" id="job-progress" role="progressbar" '
                             'aria-label="Training progress" aria-valuemin="0" aria-valuemax="100" '
                             'aria-valuenow="75"><div class="bar" style="width: 75%"></div>'
                             '<span class="label">75%</span></div>', html=True)


def test_a_job_asked_to_cancel_shows_it_is_cancelling_and_offers_no_second_cancel(
        browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING)
    browser_client.post(f"/jobs/{job.pk}/cancel/")
    page = browser_client.get(f"/jobs/{job.pk}/")
    assertContains(page, '<span id="job-status" class="status status-running">Cancelling…</span>',
                   html=True)
    assert re.search(r'<form [^>]*id="cancel-form"[^>]* hidden>', page.content.decode())
    listed = browser_client.get("/jobs/")
    assertContains(listed, "Cancelling…")
    assertNotContains(listed, f'action="/jobs/{job.pk}/cancel/"')


def test_the_cancel_buttons_ask_for_confirmation(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING)
    for url in (f"/jobs/{job.pk}/", "/jobs/"):
        response = browser_client.get(url)
        assert re.search(rf'<form method="post" action="/jobs/{job.pk}/cancel/"[^>]* '
                         rf'data-confirm="Cancel job #{job.pk}\? [^"]+"', response.content.decode())
        assertContains(response, "/static/js/confirm.js")


# --- deleting ------------------------------------------------------------------------------------


def with_checkpoints(job: TrainingJob):
    from training.services import job_workdir

    workdir = job_workdir(job.pk)
    workdir.mkdir(parents=True)
    (workdir / "last.keras").write_bytes(b"checkpoint")
    return workdir


DELETE_FORM = r'<form method="post" action="/jobs/{pk}/delete/"[^>]*data-confirm="Delete job #{pk}\? [^"]+"'


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED, Status.SUCCEEDED])
def test_finished_jobs_offer_a_delete_button_that_asks_first(browser_client, owner, dataset,
                                                             status):
    job = job_of(owner, dataset, status=status)
    for url in (f"/jobs/{job.pk}/", "/jobs/"):
        page = browser_client.get(url).content.decode()
        form = re.search(DELETE_FORM.format(pk=job.pk) + r"[^>]*>", page)
        assert form, f"{url}: no delete form that asks first"
        assert " hidden" not in form.group(0)
        assert "/static/js/confirm.js" in page


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_active_jobs_offer_no_delete_button(browser_client, owner, dataset, status):
    job = job_of(owner, dataset, status=status)
    page = browser_client.get(f"/jobs/{job.pk}/").content.decode()
    assert re.search(DELETE_FORM.format(pk=job.pk) + r"[^>]* hidden>", page)
    assertNotContains(browser_client.get("/jobs/"), f'action="/jobs/{job.pk}/delete/"')


@pytest.mark.parametrize("data", [{}, {"next": "list"}])
def test_the_delete_button_deletes_a_finished_job_and_its_checkpoints(
        browser_client, owner, dataset, data, django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=Status.FAILED)
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post(f"/jobs/{job.pk}/delete/", data)
    # From the job's page or the list, the list is where one lands: the job's page is gone.
    assertRedirects(response, "/jobs/", fetch_redirect_response=False)
    listed = browser_client.get(response.url)
    assert f"Deleted training job #{job.pk} and its checkpoints." in messages_on(listed)
    assertNotContains(listed, f'data-job="{job.pk}"')
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert not workdir.exists()
    assert browser_client.get(f"/jobs/{job.pk}/").status_code == 404


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_deleting_an_active_job_shows_why_it_cannot(browser_client, owner, dataset, status,
                                                    django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=status)
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post(f"/jobs/{job.pk}/delete/", follow=True)
    assertRedirects(response, f"/jobs/{job.pk}/")
    [message] = messages_on(response)
    assert f"job #{job.pk} is {status}" in message and "cancel it first" in message
    job.refresh_from_db()
    assert job.status == status and not job.cancel_requested
    assert workdir.exists()


def test_deleting_an_active_job_from_the_list_returns_to_the_list(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING)
    response = browser_client.post(f"/jobs/{job.pk}/delete/", {"next": "list"}, follow=True)
    assertRedirects(response, "/jobs/")
    assert "cancel it first" in messages_on(response)[0]
    assert TrainingJob.objects.filter(pk=job.pk).exists()


def test_another_users_job_cannot_be_deleted(browser_client, other_user,
                                             django_capture_on_commit_callbacks):
    theirs = job_of(other_user, DatasetFactory(owner=other_user), status=Status.FAILED)
    workdir = with_checkpoints(theirs)
    with django_capture_on_commit_callbacks(execute=True):
        assert browser_client.post(f"/jobs/{theirs.pk}/delete/").status_code == 404
    assert TrainingJob.objects.filter(pk=theirs.pk, status=Status.FAILED).exists()
    assert workdir.exists()


def test_delete_only_accepts_posts(browser_client, owner, dataset):
    job = job_of(owner, dataset, status=Status.FAILED)
    assert browser_client.get(f"/jobs/{job.pk}/delete/").status_code == 405
    assert TrainingJob.objects.filter(pk=job.pk).exists()


def test_a_deleted_jobs_model_page_still_works(browser_client, owner, dataset,
                                               django_capture_on_commit_callbacks):
    from tests.factories import ModelVersionFactory

    model = ModelVersionFactory(dataset=dataset, owner=owner, name="kept-model")
    job = job_of(owner, dataset, status=Status.SUCCEEDED, model_version=model)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post(f"/jobs/{job.pk}/delete/", follow=True)
    assert messages_on(response) == [f"Deleted training job #{job.pk} and its checkpoints. "
                                     f"Its model {model} stays in the registry."]
    assert not TrainingJob.objects.exists()
    for url in (f"/models/{model.pk}/", "/models/", "/"):
        response = browser_client.get(url)
        assert response.status_code == 200, url
        assertContains(response, "kept-model")
        assertNotContains(response, f'href="/jobs/{job.pk}/"')


def test_the_pages_of_a_retry_and_the_job_it_retried_survive_each_others_deletion(
        browser_client, owner, dataset, django_capture_on_commit_callbacks):
    first = job_of(owner, dataset, status=Status.FAILED)
    retry = job_of(owner, dataset, status=Status.FAILED, attempt=2, retry_of=first)
    page = browser_client.get(f"/jobs/{first.pk}/")
    assertContains(page, f'href="/jobs/{retry.pk}/"')
    with django_capture_on_commit_callbacks(execute=True):
        browser_client.post(f"/jobs/{retry.pk}/delete/")
    page = browser_client.get(f"/jobs/{first.pk}/")
    assert page.status_code == 200
    assertNotContains(page, f'href="/jobs/{retry.pk}/"')
    assertContains(page, f'action="/jobs/{first.pk}/retry/"')  # it may be retried again

    third = job_of(owner, dataset, status=Status.CANCELLED, attempt=2, retry_of=first)
    with django_capture_on_commit_callbacks(execute=True):
        browser_client.post(f"/jobs/{first.pk}/delete/")
    for url in (f"/jobs/{third.pk}/", "/jobs/"):
        response = browser_client.get(url)
        assert response.status_code == 200
        assertNotContains(response, f'href="/jobs/{first.pk}/"')
    assertContains(browser_client.get(f"/jobs/{third.pk}/"), "<dd>2</dd>", html=True)


def test_an_empty_job_list_links_to_the_launch_form(browser_client):
    response = browser_client.get("/jobs/")

    assert re.search(r'No training jobs yet — <a href="/jobs/new/">launch one</a>',
                     response.content.decode())


def test_the_batch_page_without_a_model_says_to_train_one_first(browser_client):
    response = browser_client.get("/inference/")

    assertContains(response, 'No trained model is available to you yet — '
                             '<a href="/jobs/new/">train one</a> first.')
    assertContains(response, "No batch jobs yet.")


def test_the_job_list_names_its_columns_and_units(browser_client, owner, dataset):
    job_of(owner, dataset, status=TrainingJob.Status.FAILED)

    html = browser_client.get("/jobs/").content.decode()

    header = re.search(r"<thead><tr>(.*?)</tr></thead>", html).group(1)
    assert re.findall(r"<th[^>]*>(.*?)</th>", header) == [
        "Job", "Dataset", "Architecture", "Status", "Epochs", "Best val acc.", "Created",
        '<span class="visually-hidden">Actions</span>']
