from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.shortcuts import redirect, render
from django.urls import path

from classifier import services
from classifier.models import Dataset, ModelVersion, Prediction, Visibility


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="A MedMNIST-style .npz or a .zip of class-named folders.")
    name = forms.CharField(max_length=120, required=False)
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.PUBLIC)

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.DATASET_UPLOAD_MAX_BYTES:
            raise forms.ValidationError(
                f"the file is {upload.size} bytes; the limit is {settings.DATASET_UPLOAD_MAX_BYTES}"
            )
        return upload


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "task", "channels", "image_height", "total_images", "source",
                    "owner", "is_builtin", "visibility", "created_at"]
    list_filter = ["task", "source", "is_builtin", "visibility"]
    search_fields = ["name", "slug", "sha256", "source_detail", "owner__username"]
    readonly_fields = ["sha256", "size_bytes", "split_counts", "class_counts", "class_names",
                       "channels", "image_height", "image_width", "data_file", "created_at"]
    actions = ["reimport_builtins"]
    change_list_template = "admin/classifier/dataset/change_list.html"

    def get_urls(self):
        extra = [path("import/", self.admin_site.admin_view(self.import_view),
                      name="classifier_dataset_import")]
        return extra + super().get_urls()

    def import_view(self, request):
        """Upload a dataset file from the admin console, or import the MedMNIST folder."""
        if request.method == "POST" and "import_medmnist" in request.POST:
            return self._import_medmnist(request)
        form = DatasetUploadForm(request.POST or None, request.FILES or None)
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
        for flag in settings.MEDMNIST_IMPORT:
            try:
                dataset, created = services.builtin_dataset_import(flag=flag)
            except services.DatasetImportError as exc:
                self.message_user(request, f"{flag}: {exc}", messages.ERROR)
            else:
                verb = "Imported" if created else "Already present:"
                self.message_user(request, f"{verb} {dataset.name}", messages.SUCCESS)
        return redirect("admin:classifier_dataset_changelist")

    @admin.action(description="Re-import selected built-in datasets from the MedMNIST folder")
    def reimport_builtins(self, request, queryset):
        for dataset in queryset.filter(is_builtin=True):
            flag = dataset.source_detail.removesuffix(".npz").split("_")[0]
            try:
                _, created = services.builtin_dataset_import(flag=flag)
            except services.DatasetImportError as exc:
                self.message_user(request, f"{dataset.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{dataset.name}: checksum verified, "
                                  f"{'re-imported' if created else 'unchanged'}.")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "architecture", "dataset", "owner", "test_accuracy",
                    "val_accuracy", "num_params", "train_seconds", "visibility", "created_at"]
    list_filter = ["architecture", "dataset", "visibility", "created_at"]
    search_fields = ["name", "architecture", "sha256", "owner__username", "dataset__name"]
    readonly_fields = ["sha256", "artifact", "metrics", "val_metrics", "history", "manifest",
                       "config", "created_at"]
    list_select_related = ["dataset", "owner"]

    @admin.display(description="Test acc.")
    def test_accuracy(self, obj):
        value = obj.test_accuracy
        return f"{value:.4f}" if value is not None else "—"

    @admin.display(description="Val acc.")
    def val_accuracy(self, obj):
        value = obj.val_accuracy
        return f"{value:.4f}" if value is not None else "—"


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "model_version", "predicted_label", "latency_ms", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["owner__username", "predicted_label", "original_name", "image_sha256"]
    list_select_related = ["owner", "model_version"]


# --- Model registry: aliases, their audit trail, evaluations ------------------------------------

from classifier import services_registry  # noqa: E402 - registry admin, kept apart from the above
from classifier.models import ModelAlias, ModelAliasChange, ModelEvaluation  # noqa: E402


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
    list_display = ["created_at", "dataset", "alias", "action", "from_version", "to_version",
                    "user", "reason"]
    list_filter = ["action", "dataset", "created_at"]
    search_fields = ["reason", "user__username", "alias__name"]
    list_select_related = ["dataset", "alias", "from_version", "to_version", "user"]


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
