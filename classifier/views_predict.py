"""HTML pages for classification: the classify form and the prediction history.

The classify page posts to the REST API from ``static/js/classify.js`` (with the session's CSRF
token) and draws the results itself; the history page is plain HTML with a filter form and a
delete button per row.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from classifier import selectors, services_predict
from classifier.models import Dataset, Prediction


def _model_groups(user) -> list[dict]:
    """Visible models grouped by dataset, each group with the dataset's default model.

    A public model may belong to a dataset the user cannot see: its group lists it, with no
    default to offer, since the API takes a dataset only from those the user can see.
    """
    groups: dict[int, dict] = {}
    models = selectors.model_versions_visible_to(user=user).order_by(
        "dataset__name", "dataset_id", "name", "-version"
    )
    for model in models:
        group = groups.setdefault(model.dataset_id, {"dataset": model.dataset, "models": []})
        group["models"].append(model)
    visible = set(selectors.datasets_visible_to(user=user).filter(pk__in=groups)
                  .values_list("pk", flat=True))
    for pk, group in groups.items():
        group["default"] = (selectors.default_model_for(dataset=group["dataset"], user=user)
                            if pk in visible else None)
    return list(groups.values())


@login_required
def classify_page(request):
    limits = services_predict.prediction_limits()
    return render(request, "classifier/classify.html", {
        "nav": "classify",
        "groups": _model_groups(request.user),
        "max_files": limits["max_files"],
        "max_bytes": limits["max_bytes"],
    })


class PredictionFilterForm(forms.Form):
    # The labels are the page's; errors name the field by them.
    model = forms.TypedChoiceField(label="Model", required=False, coerce=int, empty_value=None)
    dataset = forms.TypedChoiceField(label="Dataset", required=False, coerce=int, empty_value=None)
    label = forms.CharField(label="Predicted class", required=False, max_length=255)
    created_after = forms.DateField(label="From", required=False,
                                    widget=forms.DateInput(attrs={"type": "date"}))
    created_before = forms.DateField(label="To", required=False,
                                     widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        models = selectors.model_versions_visible_to(user=user).order_by("name", "-version")
        self.fields["model"].choices = [("", "any model")] + [(m.pk, str(m)) for m in models]
        # The datasets of the models you can use, which a public model's may not be among those
        # you can see.
        datasets = Dataset.objects.filter(
            Q(pk__in=models.values("dataset")) | Q(pk__in=selectors.datasets_visible_to(user=user))
        ).order_by("name")
        self.fields["dataset"].choices = [("", "any dataset")] + [(d.pk, d.name) for d in datasets]

    def clean(self):
        cleaned = super().clean()
        after, before = cleaned.get("created_after"), cleaned.get("created_before")
        if after is not None and before is not None and after > before:
            self.add_error("created_before", f"{before} is before the From day ({after}); no day "
                                             "is in that range")
        return cleaned


@login_required
def prediction_list_page(request):
    form = PredictionFilterForm(request.GET or None, user=request.user)
    if form.is_bound and not form.is_valid():
        history = Prediction.objects.none()  # the form says why; never everything instead
        for name in form.errors:  # outlined on the page, and announced as invalid
            if name in form.fields:
                form.fields[name].widget.attrs["aria-invalid"] = "true"
    else:
        filters = form.cleaned_data if form.is_bound else {}
        history = selectors.prediction_history(
            user=request.user, model_id=filters.get("model"), dataset_id=filters.get("dataset"),
            label=filters.get("label") or None, created_from=filters.get("created_after"),
            created_to=filters.get("created_before"),
        )
    page = Paginator(history, 50).get_page(request.GET.get("page"))
    for prediction in page:
        confidence = prediction.probabilities.get(prediction.predicted_label)
        # As a percentage with one decimal, as the classify page shows it.
        prediction.confidence_percent = None if confidence is None else 100 * confidence
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "classifier/prediction_list.html", {
        "nav": "classify",
        "form": form,
        "page": page,
        "query": query.urlencode(),
    })


@login_required
@require_POST
def prediction_delete_page(request, pk: int):
    prediction = get_object_or_404(selectors.predictions_owned_by(user=request.user), pk=pk)
    label = str(prediction)
    services_predict.prediction_delete(prediction=prediction)
    messages.success(request, f"Deleted the prediction {label}.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("prediction-list")
    return redirect(target)
