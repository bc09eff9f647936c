from __future__ import annotations

import html

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db.models.deletion import ProtectedError
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, parsers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import (
    APIException,
    NotFound,
    ParseError,
    PermissionDenied,
    ValidationError,
)
from rest_framework.response import Response

from classifier import selectors, services
from classifier.api.serializers import (
    DatasetImportSerializer,
    DatasetSerializer,
    ModelVersionSerializer,
)
from medml import dataset_io

# How much of a refused file name is repeated in the error.
_SHOWN_NAME_LENGTH = 60
# An id in a query parameter, as the schema gives it.
_ID = {"type": "integer", "minimum": 1}
# Longest image index in a URL that is looked up.
_MAX_INDEX_DIGITS = 18


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the upload is too large"
    default_code = "upload_too_large"


class UploadLimitHandler(FileUploadHandler):
    """Stops an upload once its files together pass ``limit`` bytes, while it streams in.

    Put first in ``request.upload_handlers`` (see :func:`limit_upload_size`): the chunk that
    crosses the limit never reaches the handlers that write to memory or to a temporary file,
    and Django closes (deletes) the partial file. The rest of the body is read and dropped, not
    stored, so that the client gets the answer with the reason rather than a reset connection;
    the reverse proxy's body limit bounds how long that takes.
    """

    def __init__(self, request=None, *, limit: int, per_file: bool = False):
        super().__init__(request)
        self.limit = limit
        self.per_file = per_file  # the limit of each file rather than of all together
        self.received = 0
        self.refusal = ""

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        if self.per_file:
            self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            each = " each file may have" if self.per_file else ""
            self.refusal = (f"the file {self.file_name!r} is larger than the limit of "
                            f"{self.limit} bytes{each}; nothing was stored")
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler builds the uploaded file


def limit_upload_size(request, limit: int, *, per_file: bool = False) -> None:
    """Make the multipart parsing of ``request`` stop, with a 413, past ``limit`` bytes of files
    (of any one file, with ``per_file``).

    Call it before the body is read (in ``initialize_request``); the parser below checks it.
    """
    request.upload_handlers.insert(0, UploadLimitHandler(request, limit=limit, per_file=per_file))


def upload_refusal(request) -> str:
    """Why :func:`limit_upload_size` stopped the upload of ``request`` ("" when it did not)."""
    return next((h.refusal for h in request.upload_handlers if getattr(h, "refusal", "")), "")


class _NameCheckingDjangoParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        for candidate in (file_name, html.unescape(file_name)):
            problem = dataset_io.upload_name_problem(candidate)
            if problem:
                shown = file_name if len(file_name) <= _SHOWN_NAME_LENGTH else (
                    file_name[:_SHOWN_NAME_LENGTH] + "…")
                raise MultiPartParserError(f"the uploaded file name {shown!r} is refused: {problem}")
        return super().sanitize_file_name(file_name)


class CheckedNameMultiPartParser(parsers.MultiPartParser):
    """Multipart parsing that refuses an uploaded file with an unsafe name instead of cleaning it.

    Django keeps only the last path component of a name and drops characters it cannot print,
    so ``../../x.zip`` or a name with a NUL byte would arrive looking harmless. This parser sees
    each name as the client sent it and answers 400 with the reason when
    :func:`medml.dataset_io.upload_name_problem` finds one. Requests past Django's own limits
    (files, fields, form size) get a JSON reason too, rather than a bare "Bad Request" page.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            data, files = _NameCheckingDjangoParser(meta, stream, request.upload_handlers,
                                                    encoding).parse()
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error - {exc}") from exc
        except TooManyFilesSent as exc:
            raise ParseError(f"too many files in one request; the limit is "
                             f"{settings.DATA_UPLOAD_MAX_NUMBER_FILES}") from exc
        except (TooManyFieldsSent, RequestDataTooBig) as exc:
            raise ParseError(f"the form is too large: {exc}") from exc
        refusal = upload_refusal(request)
        if refusal:
            raise UploadTooLarge({"file": [refusal]})
        return parsers.DataAndFiles(data, files)


class DatasetViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Datasets you own plus the built-in ones (staff see all). Import with a multipart POST."""

    serializer_class = DatasetSerializer
    parser_classes = [CheckedNameMultiPartParser, parsers.FormParser, parsers.JSONParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body: an upload past the limit must not reach the disk first.
        limit_upload_size(request, settings.DATASET_UPLOAD_MAX_BYTES)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        return selectors.datasets_visible_to(user=self.request.user)

    @extend_schema(
        request={"multipart/form-data": DatasetImportSerializer},
        responses={201: DatasetSerializer, 400: OpenApiResponse(description="Rejected input"),
                   413: OpenApiResponse(description="The file is larger than the upload limit; "
                                                    "nothing was stored")},
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

    @extend_schema(responses={204: None, 403: OpenApiResponse(description="Not your dataset"),
                              409: OpenApiResponse(description="Still used; nothing deleted")})
    def destroy(self, request, *args, **kwargs):
        """Delete your dataset with its file, unless trained models or training jobs use it
        (409, saying which)."""
        dataset = self.get_object()
        if not request.user.is_staff and dataset.owner_id != request.user.pk:
            raise PermissionDenied("you can only delete your own datasets")
        try:
            services.dataset_delete(dataset=dataset)
        except services.DatasetImportError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[
            OpenApiParameter("split", str, enum=["train", "val", "test"],
                             description="A split of the dataset (default train); one it does "
                                         "not have is refused (400)."),
            OpenApiParameter("per_class", int, description="Indices per class, 1 to 64 "
                                                           "(default 8); out of range is capped."),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
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

    @extend_schema(
        parameters=[OpenApiParameter("split", str, OpenApiParameter.PATH,
                                     enum=["train", "val", "test"]),
                    OpenApiParameter("index", int, OpenApiParameter.PATH)],
        responses={(200, "image/png"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"], url_path=r"images/(?P<split>train|val|test)/(?P<index>\d+)")
    def image(self, request, pk=None, split=None, index=None):
        """One image of a split as PNG, at its stored size."""
        dataset = self.get_object()
        # ``\d`` also matches other scripts' digits, which cannot go into the file name header;
        # and int() refuses thousands of digits. No split is that large anyway.
        if not index.isascii() or len(index) > _MAX_INDEX_DIGITS:
            raise NotFound(f"no image {index[:_MAX_INDEX_DIGITS]!r} in split '{split}'")
        try:
            png = selectors.dataset_image_png(dataset=dataset, split=split, index=int(index))
        except (KeyError, IndexError) as exc:
            raise NotFound(f"no image {index} in split '{split}'") from exc
        response = HttpResponse(png, content_type="image/png")
        # Shown by <img> tags; opened on its own it is a download, never a page of this origin.
        response["Content-Disposition"] = f'attachment; filename="{dataset.slug}-{split}-{index}.png"'
        response["Cache-Control"] = "private, max-age=3600"
        return response


@extend_schema_view(list=extend_schema(parameters=[
    OpenApiParameter("dataset", _ID, description="Only models trained on this dataset; a value "
                                                 "that is not an id is refused (400)."),
]))
class ModelVersionViewSet(mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """Trained models in the registry that you may see; their owner (or staff) deletes them."""

    serializer_class = ModelVersionSerializer

    @extend_schema(responses={204: None, 403: OpenApiResponse(description="Not your model"),
                              409: OpenApiResponse(description="Still used; nothing deleted")})
    def destroy(self, request, *args, **kwargs):
        """Delete the model with its files, unless an alias, other users' predictions or a
        batch job still rely on it (409, saying which)."""
        from classifier import selectors_registry, services_registry

        model = self.get_object()
        if not selectors_registry.can_manage_model(user=request.user, model_version=model):
            raise PermissionDenied("you can only delete your own models")
        try:
            services_registry.model_version_delete(model_version=model)
        except (services_registry.ModelDeleteError, ProtectedError) as exc:
            detail = (str(exc) if isinstance(exc, services_registry.ModelDeleteError)
                      else f"{model} is still in use; nothing was deleted")
            return Response({"detail": detail}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def get_queryset(self):
        qs = selectors.model_versions_visible_to(user=self.request.user)
        dataset = self.request.query_params.get("dataset") if self.action == "list" else None
        if dataset:
            dataset_id = selectors.parse_id(dataset)
            if dataset_id is None:
                raise ValidationError({"dataset": ["must be a dataset id"]})
            qs = qs.filter(dataset_id=dataset_id)
        return qs
