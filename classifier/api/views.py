from __future__ import annotations

from django.db.models.deletion import ProtectedError
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, parsers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response

from classifier import selectors, services
from classifier.api.serializers import (
    DatasetImportSerializer,
    DatasetSerializer,
    ModelVersionSerializer,
)


class DatasetViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Datasets you own plus the built-in ones (staff see all). Import with a multipart POST."""

    serializer_class = DatasetSerializer
    parser_classes = [parsers.MultiPartParser, parsers.FormParser, parsers.JSONParser]

    def get_queryset(self):
        return selectors.datasets_visible_to(user=self.request.user)

    @extend_schema(
        request={"multipart/form-data": DatasetImportSerializer},
        responses={201: DatasetSerializer, 400: OpenApiResponse(description="Rejected input")},
    )
    def create(self, request, *args, **kwargs):
        form = DatasetImportSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        upload = data["file"]
        try:
            dataset = services.dataset_import(
                source=upload,
                filename=upload.name,
                owner=request.user,
                name=data.get("name") or "",
                description=data.get("description") or "",
                visibility=data["visibility"],
                class_names=data.get("class_names"),
                seed=data["seed"],
                image_size=data.get("image_size"),
            )
        except services.DatasetImportError as exc:
            raise ValidationError({"file": [str(exc)]}) from exc
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        dataset = self.get_object()
        if not request.user.is_staff and dataset.owner_id != request.user.pk:
            raise PermissionDenied("you can only delete your own datasets")
        try:
            services.dataset_delete(dataset=dataset)
        except (services.DatasetImportError, ProtectedError) as exc:
            return Response({"detail": str(exc) if isinstance(exc, services.DatasetImportError)
                             else "this dataset is used by training jobs or models"},
                            status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def samples(self, request, pk=None):
        """A few sample image indices per class (``?split=train&per_class=8``)."""
        dataset = self.get_object()
        split = request.query_params.get("split", "train")
        if split not in dataset.split_counts:
            raise ValidationError({"split": [f"unknown split '{split}'"]})
        try:
            per_class = min(max(int(request.query_params.get("per_class", 8)), 1), 64)
        except ValueError as exc:
            raise ValidationError({"per_class": ["must be an integer"]}) from exc
        grid = selectors.dataset_sample_grid(dataset=dataset, split=split, per_class=per_class)
        for row in grid:
            row["image_urls"] = [
                f"/api/v1/datasets/{dataset.pk}/images/{split}/{i}/" for i in row["samples"]
            ]
        return Response({"split": split, "classes": grid})

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], url_path=r"images/(?P<split>train|val|test)/(?P<index>\d+)")
    def image(self, request, pk=None, split=None, index=None):
        """One image of a split as PNG, at its stored size."""
        dataset = self.get_object()
        try:
            png = selectors.dataset_image_png(dataset=dataset, split=split, index=int(index))
        except (KeyError, IndexError) as exc:
            raise NotFound(f"no image {index} in split '{split}'") from exc
        response = HttpResponse(png, content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Trained models in the registry that you may see."""

    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        qs = selectors.model_versions_visible_to(user=self.request.user)
        dataset = self.request.query_params.get("dataset")
        if dataset:
            if not dataset.isdigit():
                raise ValidationError({"dataset": ["must be a dataset id"]})
            qs = qs.filter(dataset_id=int(dataset))
        return qs
