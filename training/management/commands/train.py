import json
import shutil

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm

from classifier.models import Dataset
from training import services
from training.models import ACTIVE_STATUSES, TrainingJob


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Command(BaseCommand):
    help = (
        "Train a model from the command line with a progress bar. The run is a normal training "
        "job (it appears on the pages and registers a model); --queue hands it to a worker."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, help="Dataset id, slug or name.")
        parser.add_argument("--preset", default="", help="e.g. fast_cpu_blood; see /api/v1/presets/")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="Override a setting (repeatable), e.g. --set epochs=5 "
                                 "--set augmentation.rotate90=true")
        parser.add_argument("--owner", help="Username (default: first superuser).")
        parser.add_argument("--queue", action="store_true", help="Queue it for a worker instead.")

    def handle(self, *args, **options):
        from medml.config import ConfigError

        key = options["dataset"]
        dataset = (Dataset.objects.filter(pk=int(key)).first() if key.isdigit() else
                   Dataset.objects.filter(slug=key).first() or
                   Dataset.objects.filter(name__iexact=key).first())
        if dataset is None:
            raise CommandError(f"no dataset '{key}'")
        users = get_user_model().objects
        owner = (users.filter(username=options["owner"]).first() if options["owner"]
                 else users.filter(is_superuser=True).order_by("pk").first())
        if owner is None:
            raise CommandError("no owner: pass --owner USERNAME (or create a superuser first)")
        overrides: dict = {}
        for item in options["set"]:
            name, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--set expects KEY=VALUE, got '{item}'")
            target = overrides
            *parents, leaf = name.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = _parse_value(value)
        try:
            if options["queue"]:
                job, _ = services.training_job_create(owner=owner, dataset=dataset,
                                                      preset=options["preset"], config=overrides)
                self.stdout.write(f"Queued training job #{job.pk}.")
                return
            job = self._create_unqueued(owner, dataset, options["preset"], overrides)
        except ConfigError as exc:
            raise CommandError(f"invalid configuration: {exc.errors}") from exc
        self.stdout.write(f"Training job #{job.pk}: {job.config['architecture']} on {dataset.name}")
        try:
            outcome = self._run_with_progress(job)
        except KeyboardInterrupt:
            self._cancel_interrupted(job)
            raise CommandError(f"job #{job.pk} cancelled: interrupted") from None
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

        try:
            return services.training_job_run(job_id=job.pk, on_epoch=on_epoch)
        finally:
            bar.close()
