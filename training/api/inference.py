from __future__ import annotations

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from classifier import selectors as catalog_selectors
from classifier.api.views import CheckedNameMultiPartParser, limit_upload_size
from training import inference
from training.models import InferenceJob


class InferenceJobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    model_name = serializers.CharField(source="model_version.__str__", read_only=True)
    progress = serializers.FloatField(
        read_only=True, help_text="Fraction of the whole job done, 0..1: reading the images fills "
                                  "the first half, classifying them the second.")
    input = serializers.CharField(source="input_description", read_only=True)
    # Blank once the job has succeeded, or before a worker has it.
    phase = serializers.ChoiceField(choices=InferenceJob.Phase.choices, allow_blank=True,
                                    read_only=True, help_text="What the job is doing: reading, "
                                    "predicting or writing; blank before it starts and once done.")
    results_csv_url = serializers.SerializerMethodField()
    results_json_url = serializers.SerializerMethodField()

    class Meta:
        model = InferenceJob
        fields = ["id", "owner", "model_version", "model_name", "source", "dataset", "split",
                  "input", "status", "total", "done", "progress", "created_at", "started_at",
                  "finished_at", "seconds", "error", "summary", "report", "results_csv_url",
                  "results_json_url", "phase", "read", "deliveries"]
        read_only_fields = fields

    def _url(self, obj, kind) -> str | None:
        if obj.status != InferenceJob.Status.SUCCEEDED:
            return None
        return f"/api/v1/inference-jobs/{obj.pk}/results/{kind}/"

    def get_results_csv_url(self, obj) -> str | None:
        return self._url(obj, "csv")

    def get_results_json_url(self, obj) -> str | None:
        return self._url(obj, "json")


class InferenceJobCreateSerializer(serializers.Serializer):
    model = serializers.IntegerField(help_text="Model version id.")
    split = serializers.ChoiceField(choices=["train", "val", "test"], required=False,
                                    help_text="A split of the model's dataset (or upload a file).")
    file = serializers.FileField(required=False,
                                 help_text=".npz (images [+ labels]) or .zip of images")

    def validate_file(self, value):
        """The same type and size rules as a dataset upload, checked before the file is read."""
        if not value.name.lower().endswith((".npz", ".zip")):
            raise ValidationError(f"{value.name}: unsupported file type: upload an .npz or a .zip "
                                  "of images")
        if value.size == 0:
            raise ValidationError(f"{value.name}: the uploaded file is empty")
        limit = settings.DATASET_UPLOAD_MAX_BYTES
        if value.size > limit:
            raise ValidationError(f"{value.name}: the file is {value.size} bytes; the limit is {limit}")
        return value

    def validate(self, attrs):
        if bool(attrs.get("split")) == bool(attrs.get("file")):
            raise ValidationError({"non_field_errors": ["give either a split or a file"]})
        return attrs


def inference_job_from_request(request, data) -> InferenceJob:
    """Shared by the API and the page: validate, then create (400-style errors as exceptions)."""
    return inference_job_submit_from_request(request, data)[0]


def inference_job_submit_from_request(request, data, *, idempotency_key: str = ""
                                      ) -> tuple[InferenceJob, bool]:
    """:func:`inference_job_from_request`, with an idempotency key; returns ``(job, created)``."""
    model = catalog_selectors.model_versions_visible_to(user=request.user).filter(
        pk=data["model"]).first()
    if model is None:
        raise ValidationError({"model": [f"no model {data['model']} that you can use"]})
    if data.get("split") and not catalog_selectors.datasets_visible_to(user=request.user).filter(
            pk=model.dataset_id).exists():
        # A public model may come from a private dataset: its images stay its owner's.
        raise ValidationError({"split": [f"the images of {model.dataset.name} are not visible to "
                                         f"you; upload your own images instead"]})
    try:
        return inference.inference_job_submit(
            owner=request.user, model_version=model,
            dataset=model.dataset if data.get("split") else None,
            split=data.get("split") or "", upload=data.get("file"),
            idempotency_key=idempotency_key)
    except inference.InferenceInputError as exc:
        raise ValidationError({"file" if data.get("file") else "split": [str(exc)]}) from exc


class InferenceJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Batch inference: classify a dataset split or an uploaded .npz/.zip in a worker."""

    serializer_class = InferenceJobSerializer
    parser_classes = [CheckedNameMultiPartParser, parsers.FormParser, parsers.JSONParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body: an upload past the limit must not reach the disk first.
        limit_upload_size(request, settings.DATASET_UPLOAD_MAX_BYTES)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        return InferenceJob.objects.visible_to(self.request.user).select_related(
            "owner", "model_version", "dataset")

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        """Delete a job with its uploaded input and its results; a queued or running job is
        stopped first (a running one within about a second)."""
        inference.inference_job_delete(job=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request={"multipart/form-data": InferenceJobCreateSerializer},
        responses={201: InferenceJobSerializer, 200: InferenceJobSerializer,
                   413: OpenApiResponse(description="The file is larger than the upload limit; "
                                                    "nothing was stored")},
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Repeat-safe creation: the same key returns "
                                                 "the job the first request created.")],
    )
    def create(self, request, *args, **kwargs):
        form = InferenceJobCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 100:
            raise ValidationError({"Idempotency-Key": ["at most 100 characters"]})
        job, created = inference_job_submit_from_request(request, form.validated_data,
                                                         idempotency_key=key)
        return Response(InferenceJobSerializer(job).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        parameters=[OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=["csv", "json"])],
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, "application/json"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="No such job, or its results are not ready: they "
                                             "are once the job has succeeded"),
        },
    )
    @action(detail=True, methods=["get"], url_path=r"results/(?P<kind>csv|json)")
    def results(self, request, pk=None, kind=None):
        """The job's results as a download: ``csv`` (one row per image) or ``json``."""
        job = self.get_object()
        stored = job.results_csv if kind == "csv" else job.results_json
        if job.status != InferenceJob.Status.SUCCEEDED or not stored:
            raise NotFound("results are ready when the job has succeeded")
        response = FileResponse(stored.open("rb"), as_attachment=True,
                                filename=f"inference-job-{job.pk}.{kind}",
                                content_type="text/csv" if kind == "csv" else "application/json")
        response["X-Content-Type-Options"] = "nosniff"
        return response
