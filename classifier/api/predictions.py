"""``/api/v1/predictions/``: classify images, read and delete your own prediction history."""

from __future__ import annotations

import base64
from pathlib import PurePath

from django.core.exceptions import TooManyFilesSent
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ParseError, ValidationError
from rest_framework.response import Response

from classifier import selectors, services, services_predict
from classifier.api.views import CheckedNameMultiPartParser, UploadTooLarge, limit_upload_size
from medml.images import ImageInputError

# Plain serializers with declared fields, not ModelSerializers: these are built for every
# prediction answered, and deriving fields from the models each time costs more than predicting.


class PredictionModelSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    version = serializers.IntegerField(read_only=True)
    architecture = serializers.CharField(read_only=True)
    dataset = serializers.IntegerField(source="dataset_id", read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    class_names = serializers.ListField(
        source="dataset.class_names", child=serializers.CharField(), read_only=True
    )


class PredictionSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    predicted_label = serializers.CharField(read_only=True)
    predicted_index = serializers.IntegerField(read_only=True)
    probabilities = serializers.DictField(child=serializers.FloatField(), read_only=True)
    model = PredictionModelSerializer(source="model_version", read_only=True)
    warnings = serializers.ListField(child=serializers.CharField(), read_only=True)
    latency_ms = serializers.FloatField(read_only=True)
    uncertainty = serializers.FloatField(read_only=True, allow_null=True)
    gradcam = serializers.SerializerMethodField(
        help_text="Grad-CAM overlay for the predicted class as a PNG data URI; only in the "
                  "response that created the prediction."
    )
    original_name = serializers.CharField(read_only=True)
    image_url = serializers.SerializerMethodField()
    image_sha256 = serializers.CharField(read_only=True)
    image_content_type = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def get_image_url(self, obj) -> str:
        return _image_url(obj)

    def get_gradcam(self, obj) -> str | None:
        return _gradcam_uri(obj)


def _image_url(prediction) -> str:
    return f"/api/v1/predictions/{prediction.pk}/image/"


def _gradcam_uri(prediction) -> str | None:
    png = getattr(prediction, "gradcam_png", None)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


_CREATED_AT = PredictionSerializer().fields["created_at"]


def prediction_payload(prediction) -> dict:
    """What :class:`PredictionSerializer` gives for ``prediction``, built directly.

    Classification answers are built on every request, and a serializer instance deep-copies
    its declared fields each time (a third of a millisecond for these two). The fields and
    their forms are the serializer's; ``tests/classifier/test_predictions.py`` holds the two equal.
    """
    model_version = prediction.model_version
    dataset = model_version.dataset
    return {
        "id": prediction.pk,
        "predicted_label": str(prediction.predicted_label),
        "predicted_index": int(prediction.predicted_index),
        "probabilities": {str(k): float(v) for k, v in prediction.probabilities.items()},
        "model": {
            "id": model_version.pk, "name": str(model_version.name),
            "version": int(model_version.version), "architecture": str(model_version.architecture),
            "dataset": model_version.dataset_id, "dataset_name": str(dataset.name),
            "class_names": [str(name) for name in dataset.class_names],
        },
        "warnings": [str(w) for w in prediction.warnings],
        "latency_ms": float(prediction.latency_ms),
        "uncertainty": None if prediction.uncertainty is None else float(prediction.uncertainty),
        "gradcam": _gradcam_uri(prediction),
        "original_name": str(prediction.original_name),
        "image_url": _image_url(prediction),
        "image_sha256": str(prediction.image_sha256),
        "image_content_type": str(prediction.image_content_type),
        "created_at": _CREATED_AT.to_representation(prediction.created_at),
    }


class PredictionCreateSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False),
        allow_empty=False,
        error_messages={"required": "upload at least one image", "empty": "upload at least one image"},
        help_text="One or several PNG, JPEG, BMP or TIFF files (repeat the field).",
    )
    model = serializers.IntegerField(required=False, min_value=1, help_text="A model id.")
    dataset = serializers.IntegerField(
        required=False, min_value=1, help_text="A dataset id: its default model is used."
    )
    tta = serializers.BooleanField(
        default=False, help_text="Average over mirror images and report the spread as uncertainty "
                                 "(always on for models trained with test-time augmentation)."
    )
    gradcam = serializers.BooleanField(
        default=True, help_text="Return a Grad-CAM overlay per image (false: faster answers)."
    )

    def validate(self, attrs):
        user = self.context["request"].user
        model_id, dataset_id = attrs.get("model"), attrs.get("dataset")
        if model_id is None and dataset_id is None:
            raise ValidationError({"model": ["choose a model, or a dataset to use its default model"]})
        if model_id is not None:
            model_version = selectors.model_version_for_serving(pk=model_id, user=user)
            if model_version is None:
                raise ValidationError(
                    {"model": [f"model {model_id} does not exist or is not visible to you"]}
                )
            if dataset_id is not None and model_version.dataset_id != dataset_id:
                raise ValidationError(
                    {"model": [f"model {model_id} was not trained on dataset {dataset_id}"]}
                )
        else:
            dataset = selectors.datasets_visible_to(user=user).filter(pk=dataset_id).first()
            if dataset is None:
                raise ValidationError(
                    {"dataset": [f"dataset {dataset_id} does not exist or is not visible to you"]}
                )
            model_version = selectors.default_model_for(dataset=dataset, user=user)
            if model_version is None:
                raise ValidationError({"dataset": [f"{dataset.name} has no model you can use yet"]})
        attrs["model_version"] = model_version
        return attrs


class PredictionFilterSerializer(serializers.Serializer):
    model = serializers.IntegerField(required=False, min_value=1)
    dataset = serializers.IntegerField(required=False, min_value=1)
    label = serializers.CharField(required=False, max_length=255)
    created_after = serializers.DateField(required=False, help_text="On or after this day (UTC).")
    created_before = serializers.DateField(required=False, help_text="On or before this day (UTC).")

    def validate(self, attrs):
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after is not None and before is not None and after > before:
            raise ValidationError({"created_before": [
                f"{before} is before created_after ({after}); no day is in that range"]})
        return attrs


_FILTERS = tuple(PredictionFilterSerializer().fields)
# Besides the filters: the pagination's, and DRF's format override.
_LIST_PARAMETERS = frozenset(_FILTERS) | {"limit", "offset", "format"}


def _filter_values(query_params) -> dict[str, str]:
    """The filters asked for, one value each; an empty value is no filter (as on the page).

    A parameter the list does not know, or a filter given twice, is refused rather than ignored:
    a misspelt filter would otherwise list every prediction, as if it matched.
    """
    errors = {}
    for name in sorted(query_params):
        if name not in _LIST_PARAMETERS:
            errors[name[:40]] = [f"not a parameter of this list; filter with {', '.join(_FILTERS)}"]
        elif len(query_params.getlist(name)) > 1:
            errors[name] = ["given more than once; give one value"]
    if errors:
        raise ValidationError(errors)
    return {name: value for name, value in query_params.items()
            if name in _FILTERS and value != ""}


def _boolean_param(request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ValidationError({name: [f"must be true or false, got {value[:40]!r}"]})
    return value in ("true", "1")


_FILTER_PARAMETERS = [
    OpenApiParameter("model", {"type": "integer", "minimum": 1},
                     description="Only this model's predictions."),
    OpenApiParameter("dataset", {"type": "integer", "minimum": 1},
                     description="Only predictions of models of this dataset."),
    OpenApiParameter("label", {"type": "string", "maxLength": 255},
                     description="Only this predicted class."),
    OpenApiParameter("created_after", OpenApiTypes.DATE, description="On or after this day."),
    OpenApiParameter("created_before", OpenApiTypes.DATE, description="On or before this day."),
]


class PredictionUploadParser(CheckedNameMultiPartParser):
    """The checked multipart parser, whose refusal of too many files names this endpoint's
    limit (``PREDICTION_MAX_FILES``), not Django's larger one for every form."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except UploadTooLarge as exc:  # stopped while it streamed in (PREDICTION_MAX_BYTES)
            raise ValidationError({"images": exc.detail["file"]}) from exc
        except ParseError as exc:
            if isinstance(exc.__cause__, TooManyFilesSent):
                limit = services_predict.prediction_limits()["max_files"]
                raise ValidationError({"images": [
                    f"too many files were uploaded; at most {limit} are accepted at once"]}) from exc
            raise


@extend_schema_view(list=extend_schema(parameters=_FILTER_PARAMETERS))
class PredictionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Classify images (multipart POST), and read or delete your own predictions."""

    serializer_class = PredictionSerializer
    # Upload names are checked as sent (not silently cleaned), with JSON reasons for limits.
    parser_classes = [PredictionUploadParser, parsers.FormParser]

    def initialize_request(self, request, *args, **kwargs):
        # A file past the size limit is stopped as it streams in, not spooled to disk first.
        limit_upload_size(request, services_predict.prediction_limits()["max_bytes"], per_file=True)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        if self.action != "list":
            return selectors.predictions_owned_by(user=self.request.user)
        filters = PredictionFilterSerializer(data=_filter_values(self.request.query_params))
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        return selectors.prediction_history(
            user=self.request.user, model_id=data.get("model"), dataset_id=data.get("dataset"),
            label=data.get("label"), created_from=data.get("created_after"),
            created_to=data.get("created_before"),
        )

    @extend_schema(
        request={"multipart/form-data": PredictionCreateSerializer},
        responses={
            201: PredictionSerializer(many=True),
            400: OpenApiResponse(description="Bad image, too many files, unknown model; nothing stored"),
            409: OpenApiResponse(description="The model's artifact failed verification or cannot serve"),
        },
    )
    def create(self, request, *args, **kwargs):
        form = PredictionCreateSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            predictions = services_predict.prediction_create(
                user=request.user, model_version=data["model_version"], files=data["images"],
                tta=data["tta"], explain=data["gradcam"],
            )
        except services_predict.PredictionInputError as exc:
            raise ValidationError({"images": exc.messages}) from exc
        except (services.ArtifactIntegrityError, services_predict.ModelUnavailableError) as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response([prediction_payload(p) for p in predictions], status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        services_predict.prediction_delete(prediction=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[OpenApiParameter(
            "preview", bool, description="`true`: a PNG of at most 128 pixels a side, shown "
            "inline (TIFF and 16-bit images included), instead of the file as stored.")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                   (200, "image/png"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"])
    def image(self, request, pk=None):
        """The uploaded image as stored, as a download; with ``?preview=true`` a small PNG."""
        preview = _boolean_param(request, "preview")
        prediction = self.get_object()
        try:
            handle = prediction.image.open("rb")
        except FileNotFoundError as exc:
            raise NotFound("the image file is missing") from exc
        if preview:
            with handle:
                try:
                    png = services_predict.prediction_preview(handle.read())
                except ImageInputError as exc:  # stored under larger limits than today's
                    return Response({"detail": f"no preview of this image: {exc}"},
                                    status=status.HTTP_409_CONFLICT)
            response = HttpResponse(png, content_type="image/png")
            response["X-Content-Type-Options"] = "nosniff"
            response["Cache-Control"] = "private, max-age=3600"
            return response
        # The stored extension, not the uploaded one: it matches the content type served.
        stem = PurePath(prediction.original_name).stem or f"prediction-{prediction.pk}"
        filename = stem + PurePath(prediction.image.name).suffix
        response = FileResponse(
            handle, as_attachment=True, filename=filename,
            content_type=prediction.image_content_type or "application/octet-stream",
        )
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = "private, max-age=3600"
        return response
