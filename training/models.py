"""Background jobs: training runs, with their live progress and outcome."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from classifier.models import Dataset, ModelVersion

ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


class TrainingJobQuerySet(models.QuerySet):
    def visible_to(self, user):
        if not user or not user.is_authenticated:
            return self.none()
        return self if user.is_staff else self.filter(owner=user)

    def active(self):
        return self.filter(status__in=ACTIVE_STATUSES)


class TrainingJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_jobs"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="training_jobs")
    name = models.CharField(max_length=120, blank=True)
    preset = models.CharField(max_length=60, blank=True)
    config = models.JSONField()
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    idempotency_key = models.CharField(max_length=100, blank=True)
    cancel_requested = models.BooleanField(default=False)
    current_epoch = models.PositiveIntegerField(default=0)
    total_epochs = models.PositiveIntegerField(default=0)
    batch_progress = models.FloatField(default=0, help_text="Fraction of the current epoch done.")
    history = models.JSONField(default=list, blank=True)
    log = models.JSONField(default=list, blank=True)
    device = models.CharField(max_length=200, blank=True)
    worker_host = models.CharField(max_length=200, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    claim_token = models.CharField(
        max_length=32, blank=True, help_text="Identifies the worker run that holds the job."
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deliveries = models.PositiveIntegerField(default=0, help_text="Times a worker claimed it.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    model_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="training_job",
    )

    objects = TrainingJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="unique_training_job_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"Training job #{self.pk} ({self.get_status_display()})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def progress(self) -> float:
        """Overall fraction done, 0..1."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.total_epochs:
            return 0.0
        done = min(self.current_epoch + self.batch_progress, self.total_epochs)
        return done / self.total_epochs

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


class InferenceJob(models.Model):
    """Classify many images at once: a dataset split or an uploaded .npz/.zip, in a worker."""

    Status = TrainingJob.Status

    class Source(models.TextChoices):
        DATASET = "dataset", "Dataset split"
        UPLOAD = "upload", "Uploaded file"

    class Phase(models.TextChoices):
        """The step a running job is in (kept when it fails: where it stopped)."""

        READING = "reading", "Reading images"
        PREDICTING = "predicting", "Classifying"
        WRITING = "writing", "Writing results"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="inference_jobs"
    )
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="inference_jobs"
    )
    source = models.CharField(max_length=10, choices=Source.choices)
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.CASCADE, related_name="inference_jobs"
    )
    split = models.CharField(max_length=10, blank=True)
    idempotency_key = models.CharField(max_length=100, blank=True)
    input_file = models.FileField(upload_to="inference/inputs/", blank=True, max_length=255)
    input_name = models.CharField(max_length=255, blank=True)
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    total = models.PositiveIntegerField(default=0)
    phase = models.CharField(max_length=12, choices=Phase.choices, blank=True)
    read = models.PositiveIntegerField(default=0, help_text="Images read from the input so far.")
    done = models.PositiveIntegerField(default=0, help_text="Images classified so far.")
    claim_token = models.CharField(max_length=32, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deliveries = models.PositiveIntegerField(default=0, help_text="Times a worker claimed it.")
    worker_host = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    results_csv = models.FileField(upload_to="inference/results/", blank=True, max_length=255)
    results_json = models.FileField(upload_to="inference/results/", blank=True, max_length=255)
    summary = models.JSONField(default=dict, blank=True, help_text="Counts per predicted class.")
    report = models.JSONField(default=dict, blank=True, help_text="Evaluation, when labelled.")
    seconds = models.FloatField(default=0)

    objects = TrainingJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="unique_inference_job_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"Inference job #{self.pk} ({self.get_status_display()})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress(self) -> float:
        """Overall fraction done, 0..1: reading the images fills the first half, classifying
        them the second (a large zip takes a while to decode before any image is classified)."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.total:
            return 0.0
        return min(self.read + self.done, 2 * self.total) / (2 * self.total)

    @property
    def input_description(self) -> str:
        if self.source == self.Source.DATASET and self.dataset_id:
            return f"{self.dataset.name} / {self.split}"
        return self.input_name
