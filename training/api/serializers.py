from __future__ import annotations

from rest_framework import serializers

from classifier.models import Dataset
from training.models import TrainingJob


class TrainingJobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    progress = serializers.FloatField(read_only=True)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    model_version = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    retried_as = serializers.SerializerMethodField(
        help_text="The id of the job that retried this one (a job is retried once), or null.")

    class Meta:
        model = TrainingJob
        fields = [
            "id", "name", "owner", "dataset", "dataset_name", "preset", "config", "status",
            "attempt", "retry_of", "cancel_requested", "current_epoch", "total_epochs",
            "batch_progress", "progress", "history", "log", "device", "worker_host",
            "heartbeat_at", "deliveries", "created_at", "started_at", "finished_at",
            "duration_seconds", "error", "manifest", "model_version", "retried_as",
        ]
        read_only_fields = fields

    def get_retried_as(self, job) -> int | None:
        if hasattr(job, "retried_as"):  # annotated by training.selectors
            return job.retried_as
        return job.retries.order_by("pk").values_list("pk", flat=True).first()


class TrainingJobCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    preset = serializers.CharField(required=False, allow_blank=True, default="")
    config = serializers.JSONField(required=False, default=dict,
                                   help_text="Training settings; override the preset's.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=120, default="")

    def validate_dataset(self, dataset):
        user = self.context["request"].user
        if not Dataset.objects.visible_to(user).filter(pk=dataset.pk).exists():
            raise serializers.ValidationError(f'Invalid pk "{dataset.pk}" - object does not exist.')
        return dataset

    def validate_config(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("expected an object of training settings")
        return value

    def validate_preset(self, value):
        from medml.config import PRESETS

        if value and value not in PRESETS:
            raise serializers.ValidationError(
                f"unknown preset '{value}'; choose one of: {', '.join(sorted(PRESETS))}"
            )
        return value
