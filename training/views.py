"""Training pages: launch, list, watch, cancel, retry, delete."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from training import selectors, services
from training.forms import TrainingLaunchForm


@login_required
def job_list(request):
    return render(request, "training/job_list.html", {
        "jobs": selectors.training_jobs_visible_to(user=request.user)[:200], "nav": "jobs",
    })


@login_required
def job_new(request):
    from medml.config import PRESETS, ConfigError

    form = TrainingLaunchForm(request.POST or None, user=request.user, initial={
        "dataset": request.GET.get("dataset"), "preset": request.GET.get("preset", ""),
    })
    if request.method == "POST" and form.is_valid():
        try:
            job, _ = services.training_job_create(
                owner=request.user, dataset=form.cleaned_data["dataset"],
                preset=form.cleaned_data["preset"], config=form.config_overrides(),
                name=form.cleaned_data["name"],
            )
        except ConfigError as exc:
            for field, errors in exc.errors.items():
                target = field.split(".")[-1] if field.split(".")[-1] in form.fields else None
                for error in errors:
                    form.add_error(target, error if target else f"{field}: {error}")
        else:
            messages.success(request, f"Queued training job #{job.pk}.")
            return redirect("job-detail", pk=job.pk)
    return render(request, "training/job_new.html", {
        "form": form, "presets": PRESETS.values(), "nav": "jobs",
        "launch_data": form.client_data(), "dataset_note": form.dataset_note(),
    })


@login_required
def job_detail(request, pk: int):
    job = selectors.training_job_get_for_user(user=request.user, pk=pk)
    return render(request, "training/job_detail.html", {"job": job, "nav": "jobs"})


@login_required
@require_POST
def job_cancel(request, pk: int):
    job = selectors.training_job_get_for_user(user=request.user, pk=pk)
    try:
        services.training_job_cancel(job=job)
        messages.success(request, f"Cancelling job #{job.pk}.")
    except services.JobStateError as exc:
        messages.error(request, str(exc))
    if request.POST.get("next") == "list":
        return redirect("job-list")
    return redirect("job-detail", pk=job.pk)


@login_required
@require_POST
def job_retry(request, pk: int):
    job = selectors.training_job_get_for_user(user=request.user, pk=pk)
    try:
        new = services.training_job_retry(job=job)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
        return redirect("job-detail", pk=job.pk)
    messages.success(request, f"Queued job #{new.pk} (attempt {new.attempt}).")
    return redirect("job-detail", pk=new.pk)


@login_required
@require_POST
def job_delete(request, pk: int):
    job = selectors.training_job_get_for_user(user=request.user, pk=pk)
    try:
        services.training_job_delete(job=job)
    except services.JobStateError as exc:
        messages.error(request, str(exc))
        if request.POST.get("next") == "list":
            return redirect("job-list")
        return redirect("job-detail", pk=job.pk)
    kept = (f" Its model {job.model_version} stays in the registry." if job.model_version_id
            else "")
    messages.success(request, f"Deleted training job #{pk} and its checkpoints.{kept}")
    return redirect("job-list")


# --- Batch inference -----------------------------------------------------------------------------


def _dataset_split_allowed(user, model_id: int) -> bool:
    """Whether the user may run the model over a split of its dataset (they can see both)."""
    from classifier import selectors as catalog_selectors

    model = catalog_selectors.model_versions_visible_to(user=user).filter(pk=model_id).first()
    return model is None or catalog_selectors.datasets_visible_to(user=user).filter(
        pk=model.dataset_id).exists()


@csrf_exempt  # checked below, once the upload limit is in place
@login_required
def inference_list(request):
    """Batch jobs, and the form to start one (a split of the model's dataset, or a file)."""
    from classifier.api.views import limit_upload_size

    # Before the body is read, which the CSRF check does: an upload past the limit stops while it
    # streams in, before it reaches the disk.
    limit_upload_size(request, settings.DATASET_UPLOAD_MAX_BYTES)
    return _inference_list(request)


@csrf_protect
def _inference_list(request):
    from rest_framework.exceptions import ValidationError

    from classifier import selectors as catalog_selectors
    from classifier.api.views import upload_refusal
    from training.api.inference import inference_job_from_request
    from training.models import InferenceJob

    models = catalog_selectors.model_versions_visible_to(user=request.user)
    errors: list[str] = []
    if request.method == "POST":
        data = {"model": request.POST.get("model", ""), "split": request.POST.get("split", ""),
                "file": request.FILES.get("file")}
        model_id = catalog_selectors.parse_id(data["model"])
        refusal = upload_refusal(request)  # known once the body is read
        if refusal:
            errors.append(refusal)
        elif model_id is None:
            errors.append("choose a model")
        elif bool(data["split"]) == bool(data["file"]):
            errors.append("choose either a split of the model's dataset or a file to upload")
        elif data["split"] and not _dataset_split_allowed(request.user, model_id):
            # A public model of a private dataset: its dataset's images stay private.
            errors.append("you cannot run a model on a split of a dataset you cannot see; "
                          "upload a file instead")
        else:
            data["model"] = model_id
            try:
                job = inference_job_from_request(request, data)
            except ValidationError as exc:
                detail = exc.detail if isinstance(exc.detail, dict) else {"": exc.detail}
                errors.extend(str(m) for messages_ in detail.values() for m in messages_)
            else:
                messages.success(request, f"Queued batch inference job #{job.pk}.")
                return redirect("inference-detail", pk=job.pk)
    return render(request, "training/inference_list.html", {
        "jobs": InferenceJob.objects.visible_to(request.user).select_related(
            "model_version", "dataset")[:200],
        "models": models, "errors": errors, "nav": "inference",
        # A refused form keeps the choices made (a file input cannot be refilled).
        "chosen": {"model": request.POST.get("model", ""), "split": request.POST.get("split", ""),
                   "file": getattr(request.FILES.get("file"), "name", "")} if errors else {},
    }, status=400 if errors else 200)


@login_required
def inference_detail(request, pk: int):
    from django.shortcuts import get_object_or_404

    from training.models import InferenceJob

    job = get_object_or_404(InferenceJob.objects.visible_to(request.user), pk=pk)
    return render(request, "training/inference_detail.html", {
        "job": job, "nav": "inference", "stopped_phase": _stopped_phase(job),
    })


def _stopped_phase(job) -> str:
    """Where a failed or cancelled job stopped, as inference_detail.js words it ("" if unknown)."""
    if job.status not in ("failed", "cancelled"):
        return ""
    return {
        "reading": f"Stopped while reading images: {job.read} of {job.total} read",
        "predicting": f"Stopped while classifying: {job.done} of {job.total} classified",
        "writing": "Stopped while writing the results",
    }.get(job.phase, "")


@login_required
@require_POST
def inference_delete(request, pk: int):
    from django.shortcuts import get_object_or_404

    from training import inference
    from training.models import InferenceJob

    job = get_object_or_404(InferenceJob.objects.visible_to(request.user), pk=pk)
    inference.inference_job_delete(job=job)
    messages.success(request, f"Deleted batch job #{pk} and its files.")
    return redirect("inference-list")
