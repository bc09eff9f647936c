from __future__ import annotations

import json

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from classifier.models import Dataset, ModelVersion, Visibility
from medml import dataset_io


class DatasetSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)
    num_classes = serializers.IntegerField(read_only=True)
    total_images = serializers.IntegerField(read_only=True)
    detail_url = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id", "name", "slug", "description", "modality", "task", "class_names",
            "num_classes", "channels", "image_height", "image_width", "split_counts",
            "class_counts", "total_images", "sha256", "size_bytes", "source", "source_detail",
            "source_preprocessing", "license", "owner", "is_builtin", "visibility", "created_at",
            "detail_url",
        ]
        read_only_fields = fields

    def get_detail_url(self, obj) -> str:
        return f"/datasets/{obj.pk}/"


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class ClassNamesField(serializers.Field):
    """A list of class names, as JSON or a comma-separated string (multipart forms)."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            text = data.strip()
            if not text:
                return None
            try:
                data = json.loads(text) if text.startswith("[") else text.split(",")
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise serializers.ValidationError("expected a list of class names")
        names = [x.strip() for x in data]
        if any(not n for n in names):
            raise serializers.ValidationError("class names must not be empty")
        if len(set(names)) != len(names):
            raise serializers.ValidationError("class names must be unique")
        too_long = [n for n in names if len(n) > dataset_io.MAX_CLASS_NAME_LENGTH]
        if too_long:
            raise serializers.ValidationError(
                f"class names may have at most {dataset_io.MAX_CLASS_NAME_LENGTH} characters; "
                f"'{too_long[0][:40]}…' has {len(too_long[0])}")
        return names

    def to_representation(self, value):
        return value


class DatasetImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A MedMNIST-style .npz or a .zip of class folders.")
    name = serializers.CharField(max_length=120, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    visibility = serializers.ChoiceField(choices=Visibility.choices, default=Visibility.PRIVATE)
    class_names = ClassNamesField(required=False, allow_null=True)
    seed = serializers.IntegerField(default=0, min_value=0, max_value=2**31 - 1)
    image_size = serializers.IntegerField(required=False, allow_null=True, min_value=8,
                                          max_value=512)

    def validate_file(self, value):
        name = value.name.lower()
        if not name.endswith((".npz", ".zip")):
            raise serializers.ValidationError(
                "unsupported file type: upload a MedMNIST-style .npz or a .zip of class folders"
            )
        if value.size == 0:
            raise serializers.ValidationError("the uploaded file is empty")
        if value.size > settings.DATASET_UPLOAD_MAX_BYTES:
            raise serializers.ValidationError(
                f"the file is {value.size} bytes; the limit is {settings.DATASET_UPLOAD_MAX_BYTES}"
            )
        return value

    def validate_visibility(self, value):
        user = self.context["request"].user
        if value == Visibility.PUBLIC and not user.is_staff:
            raise serializers.ValidationError("only staff can publish datasets to every user")
        return value


class ModelVersionSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", default=None, read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "version", "architecture", "dataset", "dataset_name", "owner",
            "visibility", "sha256", "config", "metrics", "val_metrics", "history", "num_params",
            "train_seconds", "decision_threshold", "manifest", "created_at",
        ]
        read_only_fields = fields
