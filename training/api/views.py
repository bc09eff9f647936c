from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from training import selectors, services
from training.api.serializers import TrainingJobCreateSerializer, TrainingJobSerializer
from training.models import TrainingJob

# architectures/ and presets/ answer with a JSON array of objects.
LIST_OF_OBJECTS = {"type": "array", "items": {"type": "object", "additionalProperties": True}}


def config_errors_response(exc) -> ValidationError:
    return ValidationError({"config": exc.errors})


_STATUS_PARAMETER = OpenApiParameter(
    "status", str, enum=TrainingJob.Status.values,
    description="Only jobs in this state; another value is refused (400).")
_CONFLICT = OpenApiResponse(description="The job's state does not allow this; nothing changed")


@extend_schema_view(list=extend_schema(parameters=[_STATUS_PARAMETER]))
class TrainingJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                         mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Training jobs: launch, watch, cancel, retry and delete."""

    serializer_class = TrainingJobSerializer

    def get_queryset(self):
        qs = selectors.training_jobs_visible_to(user=self.request.user)
        if self.action != "list":
            return qs
        wanted = self.request.query_params.get("status")
        if wanted is None or wanted == "":
            return qs
        if wanted not in TrainingJob.Status.values:
            # A misspelt state would otherwise list nothing, as if no job had it.
            raise ValidationError({"status": [
                f"unknown status {wanted[:40]!r}; choose one of: "
                f"{', '.join(TrainingJob.Status.values)}"]})
        return qs.filter(status=wanted)

    @extend_schema(
        request=TrainingJobCreateSerializer,
        responses={201: TrainingJobSerializer, 200: TrainingJobSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Repeat-safe creation: the same key returns "
                                                 "the job the first request created.")],
    )
    def create(self, request, *args, **kwargs):
        from medml.config import ConfigError

        form = TrainingJobCreateSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 100:
            raise ValidationError({"Idempotency-Key": ["at most 100 characters"]})
        try:
            job, created = services.training_job_create(
                owner=request.user, idempotency_key=key, **form.validated_data
            )
        except ConfigError as exc:
            raise config_errors_response(exc) from exc
        return Response(TrainingJobSerializer(job).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(responses={204: None, 409: OpenApiResponse(
        description="The job is queued or running (cancel it first); nothing was deleted")})
    def destroy(self, request, *args, **kwargs):
        """Delete a finished job (failed, cancelled or succeeded) and its checkpoints.

        A succeeded job's model stays in the registry; a retry of the job keeps its attempt
        number and loses only its ``retry_of`` link.
        """
        try:
            services.training_job_delete(job=self.get_object())
        except services.JobStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: TrainingJobSerializer, 409: _CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        try:
            job = services.training_job_cancel(job=job)
        except services.JobStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(TrainingJobSerializer(job).data)

    @extend_schema(request=None, responses={201: TrainingJobSerializer, 409: _CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        job = self.get_object()
        try:
            new = services.training_job_retry(job=job)
        except services.JobStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(TrainingJobSerializer(new).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={200: LIST_OF_OBJECTS})
@api_view(["GET"])
def architectures(request):
    """The model architectures that training jobs can use."""
    from medml.architectures import list_architectures

    return Response([
        {"name": a.name, "title": a.title, "description": a.description, "family": a.family,
         "supports_pretrained": a.supports_pretrained, "report_reference": a.report_reference}
        for a in list_architectures()
    ])


@extend_schema(responses={200: LIST_OF_OBJECTS})
@api_view(["GET"])
def presets(request):
    """Named training recipes: the report's six models and the recommended ones."""
    from medml.config import PRESETS

    return Response([
        {"name": p.name, "title": p.title, "description": p.description,
         "dataset_hint": p.dataset_hint, "report_accuracy": p.report_accuracy, "config": p.config}
        for p in PRESETS.values()
    ])
