"""The catalog: datasets, model versions (the registry) and predictions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from medml.data import SPLITS


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private (owner and staff)"
    PUBLIC = "public", "Public (every user)"


class OwnedQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Rows a user may see: their own and public/built-in ones; staff see everything."""
        if not user or not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(Q(owner=user) | Q(visibility=Visibility.PUBLIC))


def visible_to(row, user) -> bool:
    """Whether ``user`` may see ``row`` (a dataset or model version): ``visible_to`` for one row,
    from its loaded fields, with no query."""
    if not user or not user.is_authenticated:
        return False
    return user.is_staff or row.owner_id == user.pk or row.visibility == Visibility.PUBLIC


class Dataset(models.Model):
    class Task(models.TextChoices):
        MULTI_CLASS = "multi-class", "Multi-class"
        BINARY = "binary", "Binary"

    class Source(models.TextChoices):
        MEDMNIST = "medmnist", "MedMNIST (official)"
        NPZ = "npz", "Uploaded .npz"
        IMAGE_ZIP = "zip", "Uploaded zip of class folders"

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    description = models.TextField(blank=True)
    modality = models.CharField(max_length=80, blank=True)
    task = models.CharField(max_length=20, choices=Task.choices)
    class_names = models.JSONField()
    channels = models.PositiveSmallIntegerField()
    image_height = models.PositiveIntegerField()
    image_width = models.PositiveIntegerField()
    split_counts = models.JSONField(help_text="Images per split: {train, val, test}.")
    class_counts = models.JSONField(help_text="Per split, images per class index.")
    data_file = models.FileField(upload_to="datasets/", max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField(default=0)
    source = models.CharField(max_length=20, choices=Source.choices)
    source_detail = models.CharField(max_length=255, blank=True)
    source_preprocessing = models.JSONField(
        default=dict,
        blank=True,
        help_text="How source images became the stored arrays (crop, resize filter, channels).",
    )
    license = models.CharField(max_length=120, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="datasets",
    )
    is_builtin = models.BooleanField(default=False)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-is_builtin", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["source_detail"],
                condition=Q(is_builtin=True),
                name="unique_builtin_dataset_source",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_height, self.image_width, self.channels)

    @property
    def splits(self) -> list[str]:
        """Split names in their natural order (JSON columns need not keep key order)."""
        return [s for s in SPLITS if s in self.split_counts]

    @property
    def total_images(self) -> int:
        return sum(self.split_counts.values())

    def class_balance_rows(self) -> list[dict]:
        """One row per class with its count in each split, for tables."""
        return [
            {
                "index": i,
                "name": name,
                "counts": [self.class_counts[split][i] for split in self.splits],
                "total": sum(self.class_counts[split][i] for split in self.splits),
            }
            for i, name in enumerate(self.class_names)
        ]


class ModelVersion(models.Model):
    """A trained model in the registry: one immutable artifact plus what is known about it."""

    name = models.CharField(max_length=120, help_text="Models with one name form a lineage.")
    version = models.PositiveIntegerField()
    architecture = models.CharField(max_length=60)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="model_versions")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="model_versions",
    )
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    artifact = models.FileField(upload_to="models/", max_length=255)
    sha256 = models.CharField(max_length=64)
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True, help_text="Test split, once.")
    val_metrics = models.JSONField(default=dict, blank=True)
    history = models.JSONField(default=list, blank=True)
    num_params = models.BigIntegerField(default=0)
    train_seconds = models.FloatField(default=0)
    decision_threshold = models.FloatField(null=True, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="unique_model_name_version")
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    @property
    def val_accuracy(self) -> float | None:
        return self.val_metrics.get("accuracy")

    @property
    def uses_tta(self) -> bool:
        """Whether the model was trained and evaluated with test-time augmentation (``tta``):
        its registered metrics are those of the averaged views, so it always predicts that way
        (single images, batch jobs, evaluations)."""
        return bool((self.config or {}).get("tta", False))


class Prediction(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="predictions"
    )
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="predictions"
    )
    image = models.FileField(upload_to="uploads/", max_length=255)
    image_content_type = models.CharField(
        max_length=40, blank=True, help_text="From the decoded format, never from the upload."
    )
    image_sha256 = models.CharField(max_length=64)
    original_name = models.CharField(max_length=255, blank=True)
    predicted_index = models.PositiveSmallIntegerField()
    predicted_label = models.CharField(max_length=255)
    probabilities = models.JSONField()
    warnings = models.JSONField(default=list, blank=True)
    latency_ms = models.FloatField(default=0)
    uncertainty = models.FloatField(
        null=True, blank=True,
        help_text="Spread of the predicted class's probability under test-time augmentation.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.predicted_label} ({self.model_version})"


# --- Evaluation and the registry's aliases -----------------------------------------------------


class ModelEvaluation(models.Model):
    """A model's predictions for every image of one split, kept so models can be compared pairwise.

    ``predicted`` holds the most probable class of each image, in the split's order; the full
    probabilities are an ``.npy`` file in storage (``float32``, ``(n, num_classes)``), from which
    reports at another decision threshold are recomputed without running the model again.
    """

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="evaluations"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    dataset_sha256 = models.CharField(max_length=64, help_text="The dataset content evaluated.")
    split = models.CharField(max_length=10)
    n = models.PositiveIntegerField()
    predicted = models.JSONField(help_text="Most probable class index of each image, in order.")
    probabilities = models.FileField(upload_to="evaluations/", max_length=255)
    seconds = models.FloatField(default=0, help_text="Inference time for the whole split.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "dataset", "split"], name="unique_model_evaluation"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_version} on {self.dataset} ({self.split})"


class ModelAlias(models.Model):
    """A named pointer such as "production" from a dataset to one of its models.

    Aliases are global per dataset and only staff change them, always through
    ``services_registry`` so that every change leaves a :class:`ModelAliasChange`.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="model_aliases")
    name = models.SlugField(max_length=40)
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="aliases"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["dataset", "name"]
        verbose_name_plural = "model aliases"
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="unique_alias_per_dataset")
        ]

    def __str__(self) -> str:
        return f"{self.dataset} / {self.name} → {self.model_version}"


class ModelAliasChange(models.Model):
    """One audit entry: who pointed an alias from which model to which, when and why.

    A removal names the model the alias pointed at as ``from_version`` and no ``to_version``;
    the alias row goes, its entries stay (``alias`` becomes empty, ``alias_name`` keeps the name).
    """

    class Action(models.TextChoices):
        PROMOTE = "promote", "Promote"
        ROLLBACK = "rollback", "Roll back"
        REMOVE = "remove", "Remove"

    alias = models.ForeignKey(
        ModelAlias, null=True, blank=True, on_delete=models.SET_NULL, related_name="changes",
        help_text="Empty once the alias was removed; a later promotion starts a new alias.",
    )
    alias_name = models.SlugField(max_length=40)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=10, choices=Action.choices)
    from_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    to_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.alias_name}: {self.from_version} → {self.to_version} ({self.action})"
