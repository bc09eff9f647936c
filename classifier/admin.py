from collections import Counter

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.utils import model_ngettext
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import ProtectedError
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from classifier import services, services_predict, services_registry
from classifier.api.views import limit_upload_size, upload_refusal
from classifier.models import (
    Dataset,
    ModelAlias,
    ModelAliasChange,
    ModelEvaluation,
    ModelVersion,
    Prediction,
    Visibility,
)
from medml import dataset_io


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="A MedMNIST-style .npz or a .zip of class-named folders.",
                           required=False)  # checked in clean_file, with the upload's refusal
    name = forms.CharField(max_length=120, required=False)
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.PUBLIC)

    def __init__(self, *args, refusal: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.refusal = refusal  # why the upload was stopped while it streamed in (see upload_refusal)

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if self.refusal:
            raise forms.ValidationError(self.refusal)
        if not upload:
            raise forms.ValidationError("choose a file to upload")
        if upload.size > settings.DATASET_UPLOAD_MAX_BYTES:
            raise forms.ValidationError(
                f"the file is {upload.size} bytes; the limit is {settings.DATASET_UPLOAD_MAX_BYTES}"
            )
        return upload


class DeleteRefused(Exception):
    """A service refused to delete a row; the row and its files are unchanged."""


def _still_used_by(exc: ProtectedError) -> str:
    counts = Counter(type(row)._meta for row in exc.protected_objects)
    used = ", ".join(f"{n} {meta.verbose_name if n == 1 else meta.verbose_name_plural}"
                     for meta, n in counts.items())
    return f"it is still used by {used}"


def _delete_selected_through_services(modeladmin, request, queryset):
    """Django's "Delete selected" action, deleting row by row through the model's service.

    Unconfirmed, or with rows protected by the database, it shows Django's confirmation page. A
    row the service refuses is kept and named in an error message; the others are deleted.
    """
    if not request.POST.get("post"):
        return delete_selected(modeladmin, request, queryset)
    _, _, perms_needed, protected = modeladmin.get_deleted_objects(queryset, request)
    if protected:
        return delete_selected(modeladmin, request, queryset)  # Django's "Cannot delete" page
    if perms_needed:
        raise PermissionDenied
    deleted = 0
    for row in queryset:
        try:
            with transaction.atomic():  # a refused row leaves no "deleted" entry in the log
                modeladmin.log_deletions(request, [row])
                modeladmin.delete_model(request, row)
        except DeleteRefused as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
        else:
            deleted += 1
    if deleted:
        modeladmin.message_user(request, gettext("Successfully deleted %(count)d %(items)s.") % {
            "count": deleted, "items": model_ngettext(modeladmin.opts, deleted)},
            messages.SUCCESS)
    return None


class ServiceDeleteAdmin(admin.ModelAdmin):
    """An admin whose deletes, one row or "Delete selected", go through the model's service.

    The service deletes the row's stored files once the delete is committed and refuses while
    the row is still in use; a refusal is shown as an error message and changes nothing.
    """

    #: Errors by which the service refuses a delete, with a message for the user.
    refusals: tuple[type[Exception], ...] = ()

    def delete_through_service(self, obj) -> None:
        raise NotImplementedError

    def delete_model(self, request, obj):
        try:
            self.delete_through_service(obj)
        except ProtectedError as exc:
            raise DeleteRefused(f"{obj} was not deleted: {_still_used_by(exc)}.") from exc
        except self.refusals as exc:
            raise DeleteRefused(f"{obj} was not deleted: {exc}.") from exc

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DeleteRefused as exc:  # raised inside the view's transaction: all rolled back
            self.message_user(request, str(exc), messages.ERROR)
            return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                                    args=[object_id], current_app=self.admin_site.name))

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            _, name, description = actions["delete_selected"]
            actions["delete_selected"] = (_delete_selected_through_services, name, description)
        return actions


class ModelVersionAdminForm(forms.ModelForm):
    def clean_visibility(self):
        visibility = self.cleaned_data["visibility"]
        for alias in self.instance.aliases.select_related("dataset"):
            problem = services_registry.alias_audience_problem(
                dataset_visibility=alias.dataset.visibility, model_visibility=visibility)
            if problem:
                raise forms.ValidationError(
                    f"'{alias.name}' of {alias.dataset} names this model, and {problem}. "
                    "Promote another model first.")
        return visibility


class DatasetAdminForm(forms.ModelForm):
    def clean_visibility(self):
        visibility = self.cleaned_data["visibility"]
        for alias in self.instance.model_aliases.select_related("model_version"):
            problem = services_registry.alias_audience_problem(
                dataset_visibility=visibility, model_visibility=alias.model_version.visibility)
            if problem:
                raise forms.ValidationError(
                    f"'{alias.name}' names the private model {alias.model_version}, and "
                    f"{problem}. Publish that model or promote another first.")
        return visibility


@admin.register(Dataset)
class DatasetAdmin(ServiceDeleteAdmin):
    form = DatasetAdminForm
    list_display = ["name", "task", "channels", "image_height", "total_images", "source",
                    "owner", "is_builtin", "visibility", "created_at"]
    list_filter = ["task", "source", "is_builtin", "visibility"]
    search_fields = ["name", "slug", "sha256", "source_detail", "owner__username"]
    # What the import read from the file stays as read; staff edit names, texts and access.
    readonly_fields = ["task", "sha256", "size_bytes", "split_counts", "class_counts",
                       "class_names", "channels", "image_height", "image_width", "data_file",
                       "source", "source_detail", "source_preprocessing", "is_builtin",
                       "created_at"]
    actions = ["reimport_builtins"]
    change_list_template = "admin/classifier/dataset/change_list.html"
    refusals = (services.DatasetImportError,)

    def has_add_permission(self, request):
        return False  # datasets come from a file: "Import a dataset" (or the import command)

    def delete_through_service(self, obj):
        services.dataset_delete(dataset=obj)

    def get_urls(self):
        protected = csrf_protect(self.import_view)

        @csrf_exempt  # checked by ``protected``, once the upload limit is in place
        def limited_import_view(request):
            # Before the body is read, which the CSRF check does: a file past the limit stops
            # while it streams in, before it reaches the disk.
            limit_upload_size(request, settings.DATASET_UPLOAD_MAX_BYTES)
            return protected(request)

        extra = [path("import/", self.admin_site.admin_view(limited_import_view),
                      name="classifier_dataset_import")]
        return extra + super().get_urls()

    def import_view(self, request):
        """Upload a dataset file from the admin console, or import the MedMNIST folder."""
        if request.method == "POST" and "import_medmnist" in request.POST:
            return self._import_medmnist(request)
        posted = request.method == "POST"  # a stopped upload may leave no field at all
        form = DatasetUploadForm(request.POST if posted else None,
                                 request.FILES if posted else None,
                                 refusal=upload_refusal(request))
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                dataset = services.dataset_import(
                    source=upload, filename=upload.name, owner=request.user,
                    name=form.cleaned_data["name"], visibility=form.cleaned_data["visibility"],
                )
            except services.DatasetImportError as exc:
                form.add_error("file", str(exc))
            else:
                self.message_user(request, f"Imported {dataset.name}.", messages.SUCCESS)
                return redirect("admin:classifier_dataset_change", dataset.pk)
        context = {**self.admin_site.each_context(request), "form": form,
                   "title": "Import a dataset", "opts": self.model._meta}
        return render(request, "admin/classifier/dataset/import.html", context)

    def _import_medmnist(self, request):
        """Import the configured built-ins from ``MEDMNIST_DIR``; a missing file is downloaded
        only when the form asks for it (a large download would hold the request)."""
        download = request.POST.get("download") == "on"
        for flag in settings.MEDMNIST_IMPORT:
            try:
                dataset, created = services.builtin_dataset_import(flag=flag, download=download)
            except services.DatasetImportError as exc:
                self.message_user(request, f"{flag}: {exc}", messages.ERROR)
            else:
                verb = "Imported" if created else "Already present:"
                self.message_user(request, f"{verb} {dataset.name}", messages.SUCCESS)
        return redirect("admin:classifier_dataset_changelist")

    @admin.action(description="Re-import selected built-in datasets from the MedMNIST folder")
    def reimport_builtins(self, request, queryset):
        for dataset in queryset.filter(is_builtin=True):
            parsed = dataset_io.parse_medmnist_filename(dataset.source_detail)
            if parsed is None:
                self.message_user(request, f"{dataset.name}: {dataset.source_detail} is not an "
                                  "official MedMNIST file name.", messages.ERROR)
                continue
            flag, size = parsed
            try:
                _, created = services.builtin_dataset_import(flag=flag, size=size, download=False)
            except services.DatasetImportError as exc:
                self.message_user(request, f"{dataset.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{dataset.name}: checksum verified, "
                                  f"{'re-imported' if created else 'unchanged'}.")


@admin.register(ModelVersion)
class ModelVersionAdmin(ServiceDeleteAdmin):
    form = ModelVersionAdminForm
    list_display = ["name", "version", "architecture", "dataset", "owner", "test_accuracy",
                    "val_accuracy", "num_params", "train_seconds", "visibility", "created_at"]
    list_filter = ["architecture", "dataset", "visibility", "created_at"]
    search_fields = ["name", "architecture", "sha256", "owner__username", "dataset__name"]
    # A registered model is immutable: staff change its owner and visibility only. Its decision
    # threshold is chosen on the model page or through the API, where it is re-reported.
    readonly_fields = ["name", "version", "architecture", "dataset", "sha256", "artifact",
                       "decision_threshold", "num_params", "train_seconds", "metrics",
                       "val_metrics", "history", "manifest", "config", "created_at"]
    list_select_related = ["dataset", "owner"]
    refusals = (services_registry.ModelDeleteError,)

    def has_add_permission(self, request):
        return False  # models are registered by training jobs, with their verified artifact

    def delete_through_service(self, obj):
        services_registry.model_version_delete(model_version=obj)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Evaluations cannot be deleted on their own in the admin, but they are part of their
        # model: the service deletes them, with their files, together with it.
        perms_needed.discard(ModelEvaluation._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    @admin.display(description="Test acc.")
    def test_accuracy(self, obj):
        value = obj.test_accuracy
        return f"{value:.4f}" if value is not None else "—"

    @admin.display(description="Val acc.")
    def val_accuracy(self, obj):
        value = obj.val_accuracy
        return f"{value:.4f}" if value is not None else "—"


@admin.register(Prediction)
class PredictionAdmin(ServiceDeleteAdmin):
    list_display = ["id", "owner", "model_version", "predicted_label", "latency_ms", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["owner__username", "predicted_label", "original_name", "image_sha256"]
    list_select_related = ["owner", "model_version"]

    # A prediction is a record of what a model answered: staff may view or delete it, never
    # write one or change what it says.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_through_service(self, obj):
        services_predict.prediction_delete(prediction=obj)


# --- Model registry: aliases, their audit trail, evaluations ------------------------------------


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through the registry services, so that every change is audited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ModelAlias)
class ModelAliasAdmin(_ReadOnlyAdmin):
    list_display = ["dataset", "name", "model_version", "updated_at"]
    list_filter = ["name", "dataset"]
    list_select_related = ["dataset", "model_version"]


@admin.register(ModelAliasChange)
class ModelAliasChangeAdmin(_ReadOnlyAdmin):
    # ``alias_name``, not the alias row: a removed alias's entries keep their name.
    list_display = ["created_at", "dataset", "alias_name", "action", "from_version",
                    "to_version", "user", "reason"]
    list_filter = ["action", "dataset", "created_at"]
    search_fields = ["reason", "user__username", "alias_name"]
    list_select_related = ["dataset", "from_version", "to_version", "user"]


@admin.register(ModelEvaluation)
class ModelEvaluationAdmin(_ReadOnlyAdmin):
    list_display = ["model_version", "dataset", "split", "n", "seconds", "created_at"]
    list_filter = ["split", "dataset"]
    exclude = ["predicted"]
    list_select_related = ["model_version", "dataset"]


admin.site.unregister(ModelVersion)


@admin.register(ModelVersion)
class RegistryModelVersionAdmin(ModelVersionAdmin):
    """The model admin with the registry's action: promote to the dataset's production alias."""

    actions = ["promote_to_production"]

    @admin.action(description="Promote to production")
    def promote_to_production(self, request, queryset):
        models = list(queryset.select_related("dataset"))
        datasets = [m.dataset_id for m in models]
        for model in models:
            if datasets.count(model.dataset_id) > 1:
                self.message_user(request, f"{model}: select one model per dataset to promote.",
                                  messages.ERROR)
                continue
            reason = f"promoted from the admin by {request.user.get_username()}"
            try:
                services_registry.model_alias_promote(
                    model_version=model, alias=services_registry.DEFAULT_ALIAS,
                    user=request.user, reason=reason,
                )
            except (services_registry.RegistryPermissionError, services_registry.AliasError) as exc:
                self.message_user(request, f"{model}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"Promoted {model} to production for {model.dataset} "
                                           f"(reason: {reason}).", messages.SUCCESS)
