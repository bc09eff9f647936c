import contextlib
import json
import shutil
import signal
import threading

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from classifier.models import Dataset
from training import services
from training.models import ACTIVE_STATUSES, TrainingJob

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=5", "augmentation.rotate90=true"]`` -> ``{"epochs": 5, "augmentation": {...}}``.

    Raises:
        CommandError: for an item without ``=``, an empty key, or a key that is both a value
            and a group of settings (``epochs=5`` and ``epochs.x=1``).
    """
    overrides: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CommandError(f"--set expects KEY=VALUE, e.g. --set epochs=5; got '{item}'")
        *parents, leaf = name.split(".")
        if not all(parents) or not leaf:
            raise CommandError(f"--set: '{name}' is not a setting name, e.g. augmentation.zoom_range")
        target = overrides
        for depth, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                group = ".".join(parents[:depth + 1])
                raise CommandError(f"--set: '{group}' is given a value and also settings inside "
                                   f"it ('{name}'); give one or the other")
        if isinstance(target.get(leaf), dict) and not isinstance(_parse_value(value), dict):
            raise CommandError(f"--set: '{name}' is given a value and also settings inside it; "
                               "give one or the other")
        target[leaf] = _parse_value(value)
    return overrides


def format_config_errors(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {' '.join(messages)}" if name != "__all__" else " ".join(messages)
                     for name, messages in errors.items())


def find_dataset(key: str, owner) -> Dataset:
    """The dataset ``key`` (id, slug or name) among those ``owner`` may see.

    Raises:
        CommandError: when none matches, or a name matches several datasets.
    """
    visible = Dataset.objects.visible_to(owner)
    key = key.strip()
    if key.isdigit():
        matches = list(visible.filter(pk=int(key))) if len(key) < 19 else []
    else:
        matches = list(visible.filter(slug=key)) or list(visible.filter(name__iexact=key))
    if len(matches) > 1:
        ids = ", ".join(str(d.pk) for d in sorted(matches, key=lambda d: d.pk))
        raise CommandError(f"several datasets are named '{key}' (ids {ids}): pass --dataset ID")
    if not matches:
        raise CommandError(f"no dataset '{key}' that {owner.get_username()} may use; see the "
                           "Datasets page for ids and names, or import one with import_dataset")
    return matches[0]


def find_owner(username: str | None):
    users = get_user_model().objects
    if username:
        owner = users.filter(username=username).first()
        if owner is None:
            raise CommandError(f"no user '{username}': pass the username of an existing account")
        return owner
    owner = users.filter(is_superuser=True).order_by("pk").first()
    if owner is None:
        raise CommandError("no owner: pass --owner USERNAME, or create an admin first "
                           "(manage.py ensure_admin)")
    return owner


class Command(BaseCommand):
    help = (
        "Train a model from the command line with a progress bar (shown on a terminal only). "
        "The run is a normal training job: it appears on the pages and registers a model. "
        "--queue hands it to a worker instead. Ctrl-C cancels the job (exit status 130)."
    )

    def add_arguments(self, parser):
        from medml.config import PRESETS

        parser.add_argument("--dataset", required=True,
                            help="Dataset id, slug or name (a dataset the owner may use).")
        parser.add_argument("--preset", default="", metavar="PRESET",
                            help=f"A named recipe: {', '.join(PRESETS)}. Without one, the "
                                 "default settings (compact_cnn) and the --set overrides.")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="Override a setting (repeatable); values are JSON where they "
                                 "parse as JSON, else text, e.g. --set epochs=5 "
                                 "--set augmentation.rotate90=true --set architecture=resnet18_28")
        parser.add_argument("--owner", help="Username of the job's owner (default: the first "
                                            "admin).")
        parser.add_argument("--queue", action="store_true",
                            help="Queue the job for a worker and return at once.")

    def handle(self, *args, **options):
        from medml.config import ConfigError

        owner = find_owner(options["owner"])
        dataset = find_dataset(options["dataset"], owner)
        overrides = parse_overrides(options["set"])
        try:
            if options["queue"]:
                job, _ = services.training_job_create(owner=owner, dataset=dataset,
                                                      preset=options["preset"], config=overrides)
                self.stdout.write(f"Queued training job #{job.pk}; a worker on the 'training' "
                                  "queue runs it (follow it on the Training page).")
                return
            job = self._create_unqueued(owner, dataset, options["preset"], overrides)
        except ConfigError as exc:
            raise CommandError(f"invalid configuration: {format_config_errors(exc.errors)}") from exc
        self.stdout.write(f"Training job #{job.pk}: {job.config['architecture']} on {dataset.name}")
        # kill (SIGTERM) stops the run as Ctrl-C does, rather than leaving the job to the sweep.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
        try:
            outcome = self._run_with_progress(job)
        except KeyboardInterrupt:
            self._cancel_interrupted(job)
            raise CommandError(f"job #{job.pk} cancelled: interrupted",
                               returncode=INTERRUPTED) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        job.refresh_from_db()
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise CommandError(f"job #{job.pk} {outcome}: {job.error or job.status}")
        model = job.model_version
        self.stdout.write(self.style.SUCCESS(
            f"Registered {model}: val accuracy {model.val_metrics.get('accuracy', 0):.4f}, "
            f"test accuracy {model.metrics.get('accuracy', 0):.4f}"
        ))

    def _create_unqueued(self, owner, dataset, preset, overrides) -> TrainingJob:
        config = services.validate_training_config(preset=preset, config=overrides)
        # What a queued job would be refused for, refused here too, before a job row exists.
        services._check_config_fits_dataset(config, dataset)
        return TrainingJob.objects.create(
            owner=owner, dataset=dataset, config=config, preset=preset,
            name=f"{config['architecture']} on {dataset.name} (command line)",
            total_epochs=services.config_total_epochs(config),
        )

    def _cancel_interrupted(self, job: TrainingJob) -> None:
        """Ctrl-C stops the run for good: left running, the job would be handed by the sweep to a
        worker (its heartbeats having stopped), which would resume it."""
        if TrainingJob.objects.filter(pk=job.pk, status__in=ACTIVE_STATUSES).update(
                status=TrainingJob.Status.CANCELLED, cancel_requested=True,
                finished_at=timezone.now(), batch_progress=0.0):
            services._append_log(job.pk, "cancelled: the train command was interrupted")
        shutil.rmtree(services.job_workdir(job.pk), ignore_errors=True)

    def _run_with_progress(self, job: TrainingJob) -> str:
        bar = tqdm(total=job.total_epochs, unit="epoch", desc=f"job #{job.pk}", disable=None)

        def on_epoch(epoch: int, metrics: dict) -> None:
            bar.n = epoch
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()
                             if k in ("loss", "val_accuracy", "val_auc") and isinstance(v, float)})
            bar.refresh()

        # Log lines go above the bar instead of through it.
        redirect = logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext()
        try:
            with redirect:
                return services.training_job_run(job_id=job.pk, on_epoch=on_epoch)
        finally:
            bar.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt
