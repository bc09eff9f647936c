"""The train command as a command-line user meets it: arguments, errors, exit status, progress."""

from __future__ import annotations

import io
import logging
import os
import signal

import pytest
from django.core.management import CommandError, call_command
from tqdm import tqdm as real_tqdm

from classifier.models import Visibility
from tests.factories import DatasetFactory, UserFactory
from training import services
from training.management.commands import train as train_command
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def work_dir(tmp_path, settings):
    settings.WORK_DIR = tmp_path / "work"
    return settings.WORK_DIR


@pytest.fixture
def owner():
    return UserFactory(username="olga")


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood")


@pytest.fixture
def no_training(monkeypatch):
    """``training_job_run`` replaced by one that succeeds at nothing: records what it was given."""
    calls = []

    def run(*, job_id, on_epoch=None):
        calls.append(job_id)
        return "stubbed"

    monkeypatch.setattr(services, "training_job_run", run)
    return calls


def train(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("train", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_setting_given_a_value_and_inner_settings_is_refused_plainly(dataset, owner,
                                                                       no_training):
    with pytest.raises(CommandError, match="'epochs' is given a value and also settings"):
        train("--dataset", str(dataset.pk), "--owner", owner.username,
              "--set", "epochs=5", "--set", "epochs.x=1")
    with pytest.raises(CommandError, match="'augmentation' is given a value and also settings"):
        train("--dataset", str(dataset.pk), "--owner", owner.username,
              "--set", "augmentation.zoom_range=0.1", "--set", "augmentation=3")
    with pytest.raises(CommandError, match="--set expects KEY=VALUE"):
        train("--dataset", str(dataset.pk), "--owner", owner.username, "--set", "=3")
    assert not TrainingJob.objects.exists()
    assert no_training == []


def test_configuration_errors_read_as_field_and_message(dataset, owner, no_training):
    with pytest.raises(CommandError) as raised:
        train("--dataset", str(dataset.pk), "--owner", owner.username, "--set", "epochs=abc")

    message = str(raised.value)
    assert message == "invalid configuration: epochs: Must be a number, got 'abc'."
    assert not TrainingJob.objects.exists()


def test_an_unknown_owner_is_named(dataset):
    with pytest.raises(CommandError, match="no user 'ghost'"):
        train("--dataset", str(dataset.pk), "--owner", "ghost")


def test_a_name_shared_by_several_datasets_asks_for_the_id(owner, no_training):
    first = DatasetFactory(owner=owner, name="Blood cells")
    second = DatasetFactory(owner=owner, name="Blood cells")

    with pytest.raises(CommandError, match=rf"several datasets are named 'blood cells' "
                                           rf"\(ids {first.pk}, {second.pk}\)"):
        train("--dataset", "blood cells", "--owner", owner.username, "--preset", "smoke")

    assert not TrainingJob.objects.exists()
    assert no_training == []


def test_another_users_private_dataset_is_not_trained_on(dataset, no_training):
    UserFactory(username="mallory")

    with pytest.raises(CommandError, match=r"no dataset .* that mallory may use"):
        train("--dataset", str(dataset.pk), "--owner", "mallory", "--preset", "smoke")

    assert not TrainingJob.objects.exists()
    dataset.visibility = Visibility.PUBLIC
    dataset.save()
    with pytest.raises(CommandError, match="stubbed"):  # trained: the stub registers no model
        train("--dataset", str(dataset.pk), "--owner", "mallory", "--preset", "smoke")
    assert TrainingJob.objects.get().owner.username == "mallory"


def test_a_config_the_dataset_cannot_serve_is_refused_before_a_job_exists(owner, no_training):
    lopsided = DatasetFactory(owner=owner, class_counts={
        "train": [12, 10, 8], "val": [4, 0, 2], "test": [5, 3, 4]})

    with pytest.raises(CommandError, match="invalid configuration: monitor: val_auc needs every "
                                           "class in the validation split"):
        train("--dataset", str(lopsided.pk), "--owner", owner.username, "--preset", "smoke",
              "--set", "monitor=val_auc")

    assert not TrainingJob.objects.exists()
    assert no_training == []


def test_ctrl_c_exits_with_the_interrupted_status(dataset, owner, monkeypatch):
    def interrupted(*, job_id, on_epoch=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "training_job_run", interrupted)
    with pytest.raises(CommandError, match="cancelled: interrupted") as raised:
        train("--dataset", str(dataset.pk), "--owner", owner.username, "--preset", "smoke")

    assert raised.value.returncode == 130
    assert TrainingJob.objects.get().status == TrainingJob.Status.CANCELLED


def test_sigterm_cancels_the_job_like_ctrl_c(dataset, owner, monkeypatch):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append("outside the command"))

    def killed(*, job_id, on_epoch=None):
        TrainingJob.objects.filter(pk=job_id).update(status=TrainingJob.Status.RUNNING)
        os.kill(os.getpid(), signal.SIGTERM)
        return "went on"

    monkeypatch.setattr(services, "training_job_run", killed)
    try:
        with pytest.raises(CommandError, match="cancelled: interrupted"):
            train("--dataset", str(dataset.pk), "--owner", owner.username, "--preset", "smoke")
        # The command's handler is gone once it returns.
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert received == ["outside the command"]
    job = TrainingJob.objects.get()
    assert job.status == TrainingJob.Status.CANCELLED
    assert job.log[-1].endswith("cancelled: the train command was interrupted")


def test_log_lines_are_written_above_the_bar_on_a_terminal(dataset, owner, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(train_command, "tqdm",
                        lambda *a, **k: real_tqdm(*a, **{**k, "disable": False, "file": screen}))
    seen = []

    def run(*, job_id, on_epoch=None):
        seen.append([type(h).__name__ for h in logging.root.handlers])
        on_epoch(1, {"loss": 0.5, "val_accuracy": 0.75})
        return "stubbed"

    monkeypatch.setattr(services, "training_job_run", run)
    with pytest.raises(CommandError, match="stubbed"):  # the stub registers no model
        train("--dataset", str(dataset.pk), "--owner", owner.username, "--preset", "smoke")

    assert "_TqdmLoggingHandler" in seen[0]
    assert "_TqdmLoggingHandler" not in [type(h).__name__ for h in logging.root.handlers]
    assert "val_accuracy=0.7500" in screen.getvalue()


def test_no_bar_is_drawn_when_output_is_not_a_terminal(dataset, owner, monkeypatch, capsys):
    def run(*, job_id, on_epoch=None):
        assert "_TqdmLoggingHandler" not in [type(h).__name__ for h in logging.root.handlers]
        on_epoch(1, {"loss": 0.5})
        return "stubbed"

    monkeypatch.setattr(services, "training_job_run", run)
    with pytest.raises(CommandError):
        call_command("train", "--dataset", str(dataset.pk), "--owner", owner.username,
                     "--preset", "smoke")

    captured = capsys.readouterr()
    assert "epoch/s" not in captured.err and "%|" not in captured.err
    assert "Training job #" in captured.out
