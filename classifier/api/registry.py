"""REST endpoints of the model registry: compare, promote, roll back and remove aliases, model
cards, exports.

Included in ``/api/v1/`` before the router, so ``models/compare/`` is not read as a model id.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.http import FileResponse, HttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import renderers, serializers, status
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier import selectors, selectors_registry, services, services_registry
from classifier.models import ModelAlias, ModelAliasChange


class CSVRenderer(renderers.BaseRenderer):
    """Lets ``?format=csv`` through content negotiation; the view writes the CSV itself."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, str | bytes) else str(data)


# --- Serializers -------------------------------------------------------------------------------------


# What alias lists say of a model the reader may not see (another user's private model).
PRIVATE_MODEL = "a private model"


def _shown(serializer, model_id: int) -> bool:
    """Whether the reader may see model ``model_id``: ``context["visible"]``, when given, holds
    the ids they may see."""
    visible = serializer.context.get("visible")
    return visible is None or model_id in visible


class AliasChangeSerializer(serializers.ModelSerializer):
    alias = serializers.CharField(source="alias_name")
    user = serializers.CharField(source="user.username", default=None)
    from_version = serializers.SerializerMethodField()
    to_version = serializers.SerializerMethodField()

    class Meta:
        model = ModelAliasChange
        fields = ["id", "alias", "action", "from_version", "to_version", "user", "reason",
                  "created_at"]

    def _version(self, version) -> dict | None:
        if version is None:
            return None
        if not _shown(self, version.pk):
            return {"id": None, "name": PRIVATE_MODEL}
        return {"id": version.pk, "name": str(version)}

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_from_version(self, obj):
        return self._version(obj.from_version)

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_to_version(self, obj):
        return self._version(obj.to_version)


class AliasSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="dataset_id")
    model = serializers.SerializerMethodField()
    model_name = serializers.SerializerMethodField()

    class Meta:
        model = ModelAlias
        fields = ["name", "dataset", "model", "model_name", "updated_at"]

    def get_model(self, obj) -> int | None:
        return obj.model_version_id if _shown(self, obj.model_version_id) else None

    def get_model_name(self, obj) -> str:
        return str(obj.model_version) if _shown(self, obj.model_version_id) else PRIVATE_MODEL


class PromoteSerializer(serializers.Serializer):
    alias = serializers.CharField(max_length=40, default=services_registry.DEFAULT_ALIAS)
    reason = serializers.CharField(max_length=2000)


class ReasonSerializer(serializers.Serializer):
    """An alias change's reason (rollback, removal)."""

    reason = serializers.CharField(max_length=2000, help_text="Kept in the audit trail.")


class EvaluateSerializer(serializers.Serializer):
    split = serializers.ChoiceField(choices=services_registry.EVALUATED_SPLITS, default="test")


class ThresholdSerializer(serializers.Serializer):
    target_sensitivity = serializers.FloatField(min_value=0.0, max_value=1.0)


def _model_for(request, pk):
    return selectors_registry.model_get_for_user(user=request.user, pk=pk)


def _manageable_model(request, pk):
    model = _model_for(request, pk)
    if not selectors_registry.can_manage_model(user=request.user, model_version=model):
        raise PermissionDenied("only the model's owner or staff can do this")
    return model


_FILES_CONFLICT = OpenApiResponse(
    description="A stored file of the model is missing, or its artifact changed since "
                "registration")
_NOT_MANAGER = OpenApiResponse(description="Not the model's owner or staff")


SPLIT_NAMES = {"test": "test", "val": "validation"}


class _NotEvaluated(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "not_evaluated"


class _Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


@contextmanager
def _stored_files_of(model):
    """Work that loads ``model``'s stored files: a file that is missing from storage, or an
    artifact changed since registration, answers 409 with the reason."""
    try:
        yield
    except services.ArtifactIntegrityError as exc:
        raise _Conflict(str(exc)) from exc
    except FileNotFoundError as exc:
        raise _Conflict(f"a stored file of {model} is missing; it cannot be loaded") from exc


# --- Views ---------------------------------------------------------------------------------------


class ModelCompareView(APIView):
    """Compare models of one dataset: metrics table, confusion matrices, curves, McNemar tests."""

    renderer_classes = [renderers.JSONRenderer, CSVRenderer]

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        # Errors are JSON, as documented, also for ``?format=csv``: the CSV renderer would
        # write the error's Python repr as text/csv.
        self.request.accepted_renderer = renderers.JSONRenderer()
        self.request.accepted_media_type = renderers.JSONRenderer.media_type
        return response

    @extend_schema(
        parameters=[
            OpenApiParameter("dataset", {"type": "integer", "minimum": 1}, required=True),
            OpenApiParameter("models", str, required=True, description="Comma-separated model ids"),
            OpenApiParameter("format", str, enum=["json", "csv"]),
        ],
        responses={200: OpenApiTypes.OBJECT, (200, "text/csv"): OpenApiTypes.STR,
                   404: OpenApiResponse(description="No such dataset visible to you")},
    )
    def get(self, request):
        dataset_id = selectors.parse_id(request.query_params.get("dataset", ""))
        if dataset_id is None:
            raise ValidationError({"dataset": ["give the id of the dataset the models share"]})
        dataset = selectors.dataset_get_for_user(user=request.user, pk=dataset_id)
        try:
            ids = selectors_registry.parse_model_ids(request.query_params.getlist("models"))
            comparison = selectors_registry.model_comparison(
                user=request.user, dataset=dataset, model_ids=ids
            )
        except selectors_registry.ComparisonError as exc:
            raise ValidationError({"models": [str(exc)]}) from exc
        if request.accepted_renderer.format == "csv":
            response = HttpResponse(selectors_registry.comparison_csv(comparison),
                                    content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="compare-{dataset.slug}.csv"'
            return response
        return Response(comparison)


class ModelPromoteView(APIView):
    """Point an alias (default ``production``) of the model's dataset at this model. Staff only."""

    @extend_schema(request=PromoteSerializer, responses={
        200: AliasSerializer, 403: OpenApiResponse(description="Not staff"),
        409: OpenApiResponse(description="Already the alias's model"),
    })
    def post(self, request, pk):
        model = _model_for(request, pk)
        form = PromoteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            alias = services_registry.model_alias_promote(
                model_version=model, alias=form.validated_data["alias"], user=request.user,
                reason=form.validated_data["reason"],
            )
        except services_registry.RegistryPermissionError as exc:
            raise PermissionDenied(str(exc)) from exc
        except services_registry.AliasError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(AliasSerializer(alias).data)


class DatasetAliasListView(APIView):
    """A dataset's aliases, those removed (each as its removal's audit entry) and its audit
    trail of alias changes (``promote``, ``rollback``, ``remove``), newest first."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, pk):
        dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
        visible = set(selectors.model_versions_visible_to(user=request.user)
                      .filter(dataset=dataset).values_list("pk", flat=True))
        # Other users' private models stay unnamed: "a private model", without an id.
        context = {"visible": visible}
        aliases = [
            {**AliasSerializer(alias, context=context).data,
             "visible_to_you": alias.model_version_id in visible}
            for alias in selectors_registry.dataset_aliases(dataset=dataset)
        ]
        changes = AliasChangeSerializer(
            selectors_registry.alias_changes(dataset=dataset), many=True, context=context
        ).data
        # Aliases removed and not set again, each as its removal's audit entry.
        removed = AliasChangeSerializer(
            selectors_registry.removed_aliases(dataset=dataset), many=True, context=context
        ).data
        return Response({"dataset": dataset.pk, "aliases": aliases, "removed": removed,
                         "changes": changes})


class AliasRollbackView(APIView):
    """Point the alias back at the model it named before its latest promotion. Staff only."""

    @extend_schema(request=ReasonSerializer, responses={
        200: AliasSerializer, 403: OpenApiResponse(description="Not staff"),
        409: OpenApiResponse(description="Nothing to roll back to, or no such alias (never "
                                         "set, or removed: promote a model to set it again)"),
    })
    def post(self, request, pk, alias):
        dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
        form = ReasonSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            result = services_registry.model_alias_rollback(
                dataset=dataset, alias=alias, user=request.user,
                reason=form.validated_data["reason"],
            )
        except services_registry.RegistryPermissionError as exc:
            raise PermissionDenied(str(exc)) from exc
        except services_registry.AliasError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(AliasSerializer(result).data)


class AliasRemoveView(APIView):
    """Remove the alias, so the dataset's users are served its default model again (for
    ``production``: the best by validation accuracy they may see). Staff only.

    Answers the removal's audit entry, whose ``from_version`` is the model the alias named. The
    model stays, and can be deleted once nothing else relies on it. A removed alias cannot be
    rolled back; promoting a model sets it again, with no rollback past the removal.
    """

    @extend_schema(request=ReasonSerializer, responses={
        200: AliasChangeSerializer, 403: OpenApiResponse(description="Not staff"),
        404: OpenApiResponse(description="No such dataset visible to you, or the dataset has "
                                         "no such alias (never had, or it was removed)"),
    })
    def post(self, request, pk, alias):
        dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
        form = ReasonSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            change = services_registry.model_alias_remove(
                dataset=dataset, alias=alias, user=request.user,
                reason=form.validated_data["reason"],
            )
        except services_registry.RegistryPermissionError as exc:
            raise PermissionDenied(str(exc)) from exc
        except services_registry.AliasNotFoundError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
        return Response(AliasChangeSerializer(change).data)


class ModelCardView(APIView):
    """The model card as Markdown."""

    @extend_schema(responses={(200, "text/markdown"): OpenApiTypes.STR})
    def get(self, request, pk):
        model = _model_for(request, pk)
        response = HttpResponse(selectors_registry.model_card_markdown(model_version=model),
                                content_type="text/markdown; charset=utf-8")
        # The card quotes names and descriptions users typed: a download, never a page.
        response["Content-Disposition"] = f'attachment; filename="model-{model.pk}-card.md"'
        return response


class ModelExportView(APIView):
    """A zip of the model as .keras, SavedModel, TFLite (and ONNX), with test inputs and card.

    Built on the first request (seconds to a minute, depending on the model) and checked:
    every format must reproduce the Keras probabilities on the test inputs to 1e-4, otherwise
    the answer is 422 with the discrepancy.
    """

    @extend_schema(responses={
        (200, "application/zip"): OpenApiTypes.BINARY,
        409: _FILES_CONFLICT,
        422: OpenApiResponse(description="An exported format disagreed with Keras"),
    })
    def get(self, request, pk):
        from medml.export import ExportParityError

        model = _model_for(request, pk)
        # A public model of a dataset the user cannot see is exported without its images.
        shares_dataset = selectors.datasets_visible_to(user=request.user).filter(
            pk=model.dataset_id).exists()
        try:
            with _stored_files_of(model):
                bundle = services_registry.model_version_export(
                    model_version=model, with_dataset_samples=shares_dataset)
        except ExportParityError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        return FileResponse(open(bundle, "rb"), as_attachment=True,  # closed by Django
                            filename=f"{model.name}-v{model.version}.zip",
                            content_type="application/zip")


class ModelEvaluateView(APIView):
    """Evaluate the model on its dataset's test split (or ``{"split": "val"}``) now (owner or
    staff); returns the report, which replaces the model's test (or validation) metrics."""

    @extend_schema(request=EvaluateSerializer, responses={
        200: OpenApiTypes.OBJECT,
        400: OpenApiResponse(description="Another split, no images in the split, or a model "
                                         "whose outputs do not match the dataset's classes"),
        403: _NOT_MANAGER, 409: _FILES_CONFLICT,
    })
    def post(self, request, pk):
        model = _manageable_model(request, pk)
        form = EvaluateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        split = form.validated_data["split"]
        try:
            with _stored_files_of(model):
                evaluation = services_registry.model_version_evaluate(model_version=model,
                                                                      split=split)
        except services_registry.EvaluationError as exc:
            raise _NotEvaluated(str(exc)) from exc
        if evaluation is None:
            # ``detail`` is a string, as in every other error that names no field.
            raise _NotEvaluated(f"{model.dataset} has no {SPLIT_NAMES[split]} images")
        return Response(model.metrics if split == "test" else model.val_metrics)


class ModelThresholdView(APIView):
    """Choose a two-class model's decision threshold for a target sensitivity (owner or staff).

    ``POST {"target_sensitivity": 0.9}`` chooses it on the validation split; ``DELETE`` goes
    back to the most probable class.
    """

    @extend_schema(request=ThresholdSerializer, responses={
        200: OpenApiTypes.OBJECT, 403: _NOT_MANAGER, 409: _FILES_CONFLICT})
    def post(self, request, pk):
        model = _manageable_model(request, pk)
        form = ThresholdSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            with _stored_files_of(model):
                model = services_registry.model_version_set_threshold(
                    model_version=model,
                    target_sensitivity=form.validated_data["target_sensitivity"])
        except services_registry.EvaluationError as exc:
            raise ValidationError({"target_sensitivity": [str(exc)]}) from exc
        return Response(_threshold_answer(model))

    @extend_schema(request=None, responses={
        200: OpenApiTypes.OBJECT, 403: _NOT_MANAGER, 409: _FILES_CONFLICT})
    def delete(self, request, pk):
        model = _manageable_model(request, pk)
        with _stored_files_of(model):
            model = services_registry.model_version_clear_threshold(model_version=model)
        return Response(_threshold_answer(model))


def _threshold_answer(model) -> dict:
    return {
        "decision_threshold": model.decision_threshold,
        "operating_point": model.val_metrics.get("operating_point"),
        "test_at_threshold": model.metrics.get("at_threshold"),
    }


urlpatterns = [
    path("models/compare/", ModelCompareView.as_view(), name="model-compare-api"),
    path("models/<int:pk>/promote/", ModelPromoteView.as_view(), name="model-promote-api"),
    path("models/<int:pk>/card/", ModelCardView.as_view(), name="model-card-api"),
    path("models/<int:pk>/export/", ModelExportView.as_view(), name="model-export-api"),
    path("models/<int:pk>/evaluate/", ModelEvaluateView.as_view(), name="model-evaluate-api"),
    path("models/<int:pk>/threshold/", ModelThresholdView.as_view(), name="model-threshold-api"),
    path("datasets/<int:pk>/aliases/", DatasetAliasListView.as_view(), name="dataset-aliases-api"),
    path("datasets/<int:pk>/aliases/<slug:alias>/rollback/", AliasRollbackView.as_view(),
         name="alias-rollback-api"),
    path("datasets/<int:pk>/aliases/<slug:alias>/remove/", AliasRemoveView.as_view(),
         name="alias-remove-api"),
]
