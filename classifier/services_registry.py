"""Writes of the model registry: evaluations, decision thresholds, aliases and export bundles.

Aliases ("production", ...) are global per dataset and only staff may change them: a dataset's
production model is what every user of the dataset is served, so choosing it is an operator's
decision, not a model owner's. Every change, promotion, rollback or removal, writes one
:class:`~classifier.models.ModelAliasChange` in the same transaction.

Evaluation runs the model over a whole split in this process (batch inference through
``medml.evaluate.predict_proba``); TensorFlow is imported on first use.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from classifier import selectors, selectors_registry, services
from classifier.models import (
    ModelAlias,
    ModelAliasChange,
    ModelEvaluation,
    ModelVersion,
    Visibility,
)
from medml import stats

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = selectors_registry.DEFAULT_ALIAS
ALIAS_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
EXPORT_SAMPLES = 8
EVALUATED_SPLITS = ("val", "test")


class RegistryPermissionError(Exception):
    """The user may not make this change (aliases are changed by staff only)."""


class AliasError(Exception):
    """A promotion, rollback or removal that cannot be made; the message says why, for the user."""


class AliasNotFoundError(AliasError):
    """The dataset has no alias of that name (never had one, or it was removed)."""


class EvaluationError(Exception):
    """An evaluation or threshold that cannot be computed for this model; the message says why."""


def model_cache_dir() -> Path:
    """Where verified local copies of model artifacts are kept (shared with serving)."""
    configured = getattr(settings, "MODEL_CACHE_DIR", None)
    return Path(configured) if configured else Path(settings.VAR_DIR) / "model-cache"


def _load_model(model_version: ModelVersion) -> keras.Model:
    import keras

    path = services.model_artifact_local_path(model_version=model_version,
                                              cache_dir=model_cache_dir())
    return keras.models.load_model(path, compile=False, safe_mode=True)


# --- Evaluation ----------------------------------------------------------------------------------


def _bootstrap_resamples() -> int:
    return int(getattr(settings, "MODEL_EVALUATION_BOOTSTRAP", 1000))


def _report(model_version: ModelVersion, labels: np.ndarray, probs: np.ndarray) -> dict:
    """The full report at the default rule and, for two classes, at the served threshold."""
    names = list(model_version.dataset.class_names)
    if len(names) != 2:
        return stats.full_report(labels, probs, names, n_bootstrap=_bootstrap_resamples(), seed=0)
    positive = stats.default_positive_class(names)
    threshold = None
    if model_version.decision_threshold is not None:
        threshold = stats.positive_class_threshold(model_version.decision_threshold, positive)
        threshold = min(max(threshold, 0.0), 1.0)
    return stats.full_report(
        labels, stats.binary_probabilities(probs), names, threshold=threshold,
        positive_class=positive, n_bootstrap=_bootstrap_resamples(), seed=0,
    )


def _with_evaluation_facts(report: dict, evaluation: ModelEvaluation, tta: bool) -> dict:
    report["evaluation"] = {
        "split": evaluation.split,
        "dataset_id": evaluation.dataset_id,
        "dataset_sha256": evaluation.dataset_sha256,
        "seconds": round(evaluation.seconds, 4),
        "ms_per_image": round(1000 * evaluation.seconds / max(evaluation.n, 1), 4),
        "tta": tta,
    }
    return report


def _store_report(model_version: ModelVersion, evaluation: ModelEvaluation, probs: np.ndarray,
                  labels: np.ndarray) -> None:
    report = _with_evaluation_facts(_report(model_version, labels, probs), evaluation,
                                    bool(model_version.config.get("tta", False)))
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        if evaluation.split == "test":
            locked.metrics = report
            locked.save(update_fields=["metrics"])
        elif evaluation.split == "val":
            # The operating point was chosen on this split; a new report keeps it.
            if "operating_point" in locked.val_metrics:
                report["operating_point"] = locked.val_metrics["operating_point"]
            locked.val_metrics = report
            locked.save(update_fields=["val_metrics"])
    model_version.metrics, model_version.val_metrics = locked.metrics, locked.val_metrics


def evaluation_probabilities(evaluation: ModelEvaluation) -> np.ndarray:
    """The stored ``(n, num_classes)`` probabilities of an evaluation."""
    with evaluation.probabilities.open("rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def model_version_evaluate(*, model_version: ModelVersion, split: str = "test") -> ModelEvaluation | None:
    """Run the model over a split of its dataset, store its predictions and its full report.

    The report (:func:`medml.stats.full_report`, plus inference timing) replaces
    ``metrics`` for the test split and ``val_metrics`` for the validation split. The per-image
    predictions are kept as a :class:`ModelEvaluation`, so that two models can be compared on
    the same images and a new threshold re-reported without running the model again.

    Returns:
        The evaluation, or ``None`` when the dataset has no images in ``split``.

    Raises:
        services.ArtifactIntegrityError: when the artifact changed since registration.
        EvaluationError: for a split other than ``val`` or ``test``, or a model whose outputs
            are not one per class of the dataset.
    """
    if split not in EVALUATED_SPLITS:
        raise EvaluationError(f"only the val and test splits are evaluated, not '{split}'")
    from medml.evaluate import predict_proba

    dataset = model_version.dataset
    arrays = selectors.dataset_arrays(dataset=dataset)
    if split not in arrays.splits or len(arrays.labels(split)) == 0:
        return None
    images, labels = arrays.images(split), arrays.labels(split)
    model = _load_model(model_version)
    outputs, names = int(model.output.shape[-1]), list(dataset.class_names)
    if outputs != len(names):
        raise EvaluationError(
            f"{model_version} gives {outputs} class probabilities but {dataset} has "
            f"{len(names)} classes ({', '.join(names)}): its outputs cannot be read as them"
        )
    started = time.perf_counter()
    probs = predict_proba(model, images, tta=model_version.uses_tta)
    seconds = time.perf_counter() - started

    buffer = io.BytesIO()
    np.save(buffer, probs.astype(np.float32), allow_pickle=False)
    stored = default_storage.save(
        f"evaluations/{model_version.sha256[:16]}-{dataset.sha256[:12]}-{split}.npy",
        ContentFile(buffer.getvalue()),
    )
    try:
        with transaction.atomic():
            previous = (ModelEvaluation.objects.select_for_update()
                        .filter(model_version=model_version, dataset=dataset, split=split).first())
            evaluation, _ = ModelEvaluation.objects.update_or_create(
                model_version=model_version, dataset=dataset, split=split,
                defaults={
                    "dataset_sha256": dataset.sha256, "n": len(labels),
                    "predicted": probs.argmax(axis=1).astype(int).tolist(),
                    "probabilities": stored, "seconds": seconds,
                },
            )
            if previous and previous.probabilities.name != stored:
                old = previous.probabilities.name
                transaction.on_commit(lambda: default_storage.delete(old))
    except Exception:
        default_storage.delete(stored)
        raise
    _store_report(model_version, evaluation, probs, labels)
    return evaluation


def _current_evaluation(model_version: ModelVersion, split: str) -> ModelEvaluation | None:
    return selectors_registry.model_evaluation(model_version=model_version, split=split)


def _test_predictions(model_version: ModelVersion) -> tuple[ModelEvaluation, np.ndarray,
                                                             np.ndarray] | None:
    """The stored test-split predictions with their labels, for a report at another threshold;
    the model is evaluated now when there are none (so a missing or changed artifact fails here,
    before a threshold changes). ``None`` when the dataset has no test images."""
    evaluation = _current_evaluation(model_version, "test") or model_version_evaluate(
        model_version=model_version, split="test")
    if evaluation is None:
        return None
    labels = selectors.dataset_arrays(dataset=model_version.dataset).labels("test")
    return evaluation, evaluation_probabilities(evaluation), labels


def model_version_set_threshold(*, model_version: ModelVersion, target_sensitivity: float) -> ModelVersion:
    """Choose a two-class model's decision threshold on the validation split and apply it.

    The positive class is the dataset's clinically positive one
    (:func:`medml.stats.default_positive_class`; malignant, label 0, for BreastMNIST). The
    threshold is the largest whose validation sensitivity reaches ``target_sensitivity``. It is
    stored as ``decision_threshold`` on class 1's probability, the rule serving applies, and
    the choice itself as ``val_metrics["operating_point"]``. The test report is then redone
    with metrics at both the default rule and the new threshold.

    Raises:
        EvaluationError: for a model with more than two classes, no validation images (or
            none of the positive class), or a target outside ``(0, 1]``.
        services.ArtifactIntegrityError: when the artifact changed since registration.
    """
    names = list(model_version.dataset.class_names)
    if len(names) != 2:
        raise EvaluationError(
            f"a decision threshold applies to two-class models; {model_version} has {len(names)}"
        )
    evaluation = _current_evaluation(model_version, "val") or model_version_evaluate(
        model_version=model_version, split="val"
    )
    if evaluation is None:
        raise EvaluationError(f"{model_version.dataset} has no validation images to choose on")
    labels = selectors.dataset_arrays(dataset=model_version.dataset).labels("val")
    probs = stats.binary_probabilities(evaluation_probabilities(evaluation))
    positive = stats.default_positive_class(names)
    try:
        chosen = stats.choose_threshold(labels, probs[:, positive],
                                        target_sensitivity=target_sensitivity,
                                        positive_class=positive)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    decision = stats.class_one_threshold(chosen["threshold"], positive)
    chosen |= {"positive_class_name": names[positive], "decision_threshold": decision}
    test = _test_predictions(model_version)
    with transaction.atomic():  # the threshold and the test report at it, together
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        locked.decision_threshold = decision
        locked.val_metrics = {**locked.val_metrics, "operating_point": chosen}
        locked.save(update_fields=["decision_threshold", "val_metrics"])
        model_version.decision_threshold, model_version.val_metrics = decision, locked.val_metrics
        if test is not None:
            _store_report(model_version, *test)
    return model_version


def model_version_clear_threshold(*, model_version: ModelVersion) -> ModelVersion:
    """Go back to predicting the most probable class, and re-report the test split."""
    rereport = model_version.metrics.get("at_threshold") or _current_evaluation(model_version,
                                                                                "test")
    test = _test_predictions(model_version) if rereport else None
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        locked.decision_threshold = None
        locked.val_metrics = {k: v for k, v in locked.val_metrics.items() if k != "operating_point"}
        locked.save(update_fields=["decision_threshold", "val_metrics"])
        model_version.decision_threshold, model_version.val_metrics = None, locked.val_metrics
        if test is not None:
            _store_report(model_version, *test)
    return model_version


# --- Aliases -------------------------------------------------------------------------------------


def _require_staff(user) -> None:
    if not selectors_registry.can_change_aliases(user=user):
        raise RegistryPermissionError("only staff can change a dataset's model aliases")


def _clean_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise AliasError("give a reason: it is kept in the audit trail")
    return reason[:2000]


def alias_audience_problem(*, dataset_visibility: str, model_visibility: str) -> str | None:
    """Why an alias of a dataset with ``dataset_visibility`` may not name a model with
    ``model_visibility``, or ``None``: a dataset every user sees takes only a public model,
    since its alias is what every user is served (a private one only its owner would get)."""
    if dataset_visibility == Visibility.PUBLIC and model_visibility != Visibility.PUBLIC:
        return ("a dataset every user sees may only have a public model as an alias: its users "
                "are served that model, and a private one would reach its owner alone")
    return None


def _check_alias_audience(dataset, model_version: ModelVersion) -> None:
    problem = alias_audience_problem(dataset_visibility=dataset.visibility,
                                     model_visibility=model_version.visibility)
    if problem:
        raise AliasError(f"{model_version} is private: {problem}; publish the model first")


def model_alias_promote(
    *, model_version: ModelVersion, alias: str = DEFAULT_ALIAS, user, reason: str
) -> ModelAlias:
    """Point ``alias`` of the model's dataset at ``model_version``, with an audit entry.

    A dataset every user sees takes only a public model: its users are served the alias's
    model as the dataset's default, and a private one would be served to its owner alone while
    everyone else silently got another.

    Raises:
        RegistryPermissionError: for a user who is not staff.
        AliasError: for a bad alias name, an empty reason, a model the alias already names, or
            a private model of a public dataset.
    """
    _require_staff(user)
    if not ALIAS_NAME.match(alias or ""):
        raise AliasError(
            f"'{alias}' is not an alias name: lowercase letters, digits and hyphens, at most 40"
        )
    reason = _clean_reason(reason)
    dataset = model_version.dataset
    _check_alias_audience(dataset, model_version)
    with transaction.atomic():
        current = ModelAlias.objects.select_for_update().filter(dataset=dataset, name=alias).first()
        previous = None
        if current is None:
            try:
                with transaction.atomic():
                    current = ModelAlias.objects.create(
                        dataset=dataset, name=alias, model_version=model_version
                    )
                created = True
            except IntegrityError:  # created meanwhile by a concurrent promotion
                current = ModelAlias.objects.select_for_update().get(dataset=dataset, name=alias)
                created = False
        else:
            created = False
        if not created:
            if current.model_version_id == model_version.pk:
                raise AliasError(f"{alias} of {dataset} already is {model_version}")
            previous = current.model_version
            current.model_version = model_version
            current.save(update_fields=["model_version", "updated_at"])
        ModelAliasChange.objects.create(
            alias=current, alias_name=alias, dataset=dataset,
            action=ModelAliasChange.Action.PROMOTE,
            from_version=previous, to_version=model_version, user=user, reason=reason,
        )
    logger.info("%s promoted %s to %s of %s", user, model_version, alias, dataset)
    return current


def model_alias_rollback(*, dataset, alias: str, user, reason: str) -> ModelAlias:
    """Point ``alias`` back at the model it named before its latest promotion still in force.

    The audit trail is read as a stack: a promotion pushes its model, a rollback pops one. So
    after promoting A, then B, then C, two rollbacks lead to B and then A. A removed alias has
    no history to go back through: rolling it back is refused, and a promotion after the
    removal starts the alias anew, so it cannot be rolled back to a model named before it.

    Raises:
        RegistryPermissionError: for a user who is not staff.
        AliasNotFoundError: when the alias does not exist (the message says when it was
            removed, and from which model, if it was).
        AliasError: when the alias has nothing to go back to, the earlier model was deleted,
            or it is private and the dataset public; or for an empty reason.
    """
    _require_staff(user)
    reason = _clean_reason(reason)
    with transaction.atomic():
        current = _locked_alias(dataset, alias)
        stack = selectors_registry.alias_stack(alias=current)
        if len(stack) < 2:
            raise AliasError(f"{alias} of {dataset} has no earlier model to roll back to")
        target_id = stack[-2]
        target = ModelVersion.objects.filter(pk=target_id).first() if target_id else None
        if target is None:
            raise AliasError(f"the model {alias} named before was deleted; promote one instead")
        _check_alias_audience(dataset, target)
        previous = current.model_version
        current.model_version = target
        current.save(update_fields=["model_version", "updated_at"])
        ModelAliasChange.objects.create(
            alias=current, alias_name=alias, dataset=dataset,
            action=ModelAliasChange.Action.ROLLBACK,
            from_version=previous, to_version=target, user=user, reason=reason,
        )
    logger.info("%s rolled %s of %s back to %s", user, alias, dataset, target)
    return current


def _locked_alias(dataset, alias: str) -> ModelAlias:
    """The alias row, locked for the rest of the transaction.

    Raises:
        AliasNotFoundError: when the dataset has no such alias (saying when it was removed).
    """
    current = ModelAlias.objects.select_for_update().filter(dataset=dataset, name=alias).first()
    if current is None:
        raise AliasNotFoundError(_missing_alias(dataset, alias))
    return current


def _missing_alias(dataset, alias: str) -> str:
    """Why ``alias`` of ``dataset`` cannot be changed: it does not exist, or was removed."""
    removal = selectors_registry.alias_removal(dataset=dataset, alias=alias)
    if removal is None:
        return f"{dataset} has no alias '{alias}'"
    named = f" from {removal.from_version}" if removal.from_version else ""
    by = f" by {removal.user.username}" if removal.user else ""
    return (f"{dataset} has no alias '{alias}': it was removed{named} on "
            f"{removal.created_at:%Y-%m-%d %H:%M} UTC{by}; promote a model to set it again")


def model_alias_remove(*, dataset, alias: str, user, reason: str) -> ModelAliasChange:
    """Remove ``alias`` of ``dataset``, with an audit entry naming the model it pointed at.

    The dataset's users are then served its default again: for ``production``, the model
    with the best validation accuracy they may see (:func:`classifier.selectors.default_model_for`).
    Nothing cached has to be dropped for that: the alias is read on every request, and the
    serving cache (``selectors.serving_models``) holds model and dataset rows, which a change
    of alias leaves as they are. The model itself stays, and can be deleted once nothing else
    relies on it. The alias's audit entries stay too, with its name; a later promotion starts
    a new alias, whose rollbacks never go back past the removal.

    Returns:
        The audit entry of the removal (``from_version``: the model the alias named).

    Raises:
        RegistryPermissionError: for a user who is not staff.
        AliasNotFoundError: when the dataset has no such alias; nothing is changed.
        AliasError: for an empty reason.
    """
    _require_staff(user)
    reason = _clean_reason(reason)
    with transaction.atomic():
        current = _locked_alias(dataset, alias)
        change = ModelAliasChange.objects.create(
            alias=current, alias_name=alias, dataset=dataset,
            action=ModelAliasChange.Action.REMOVE, from_version=current.model_version,
            to_version=None, user=user, reason=reason,
        )
        current.delete()  # its audit entries stay, the new one included (``alias`` emptied)
        change.alias = None
    logger.info("%s removed %s of %s (was %s)", user, alias, dataset, change.from_version)
    return change


# --- Export --------------------------------------------------------------------------------------


def _export_samples(labels: np.ndarray, num_classes: int, limit: int = EXPORT_SAMPLES) -> np.ndarray:
    """Indices of up to ``limit`` images taking the classes in turn, so each class is present."""
    by_class = [np.flatnonzero(labels == index).tolist() for index in range(num_classes)]
    chosen: list[int] = []
    while len(chosen) < limit and any(by_class):
        for indices in by_class:
            if indices and len(chosen) < limit:
                chosen.append(indices.pop(0))
    return np.array(sorted(chosen), dtype=np.int64)


def model_version_export(*, model_version: ModelVersion, with_dataset_samples: bool = True) -> Path:
    """A verified export bundle (zip) of the model; built once per model and model card.

    The bundle's test inputs are a few images of the model's dataset, one or more per class,
    with their labels. A public model may belong to a dataset its user cannot see: with
    ``with_dataset_samples=False`` the inputs are seeded noise images instead, without labels,
    so the bundle holds nothing of the dataset. The parity checks run on them the same way.

    Raises:
        medml.export.ExportParityError: when an exported format disagrees with Keras.
        services.ArtifactIntegrityError: when the artifact changed since registration.
    """
    from medml import export

    card = selectors_registry.model_card_markdown(model_version=model_version)
    key = hashlib.sha256(
        f"{export.BUNDLE_FORMAT}|{export.onnx_available()}|{card}".encode()
    ).hexdigest()[:12]
    folder = Path(settings.WORK_DIR) / "exports"
    variant = f"{model_version.sha256[:16]}-{'samples' if with_dataset_samples else 'noise'}"
    out = folder / f"{variant}-{key}.zip"
    if out.exists():
        return out
    dataset = model_version.dataset
    if with_dataset_samples:
        arrays = selectors.dataset_arrays(dataset=dataset)
        split = next(s for s in ("test", "val", "train")
                     if s in arrays.splits and len(arrays.labels(s)))
        picked = _export_samples(arrays.labels(split), dataset.num_classes)
        images, labels = arrays.images(split)[picked], arrays.labels(split)[picked]
        samples_from = f"{dataset.name} {split} split, indices {picked.tolist()}"
    else:
        images = np.random.default_rng(0).integers(
            0, 256, (EXPORT_SAMPLES, *dataset.image_shape), dtype=np.uint8)
        labels, samples_from = None, "seeded noise images (the dataset is not shared)"
    path = services.model_artifact_local_path(model_version=model_version,
                                              cache_dir=model_cache_dir())
    export.export_bundle(
        model_path=path, out_path=out, model_card=card,
        sample_images=images, sample_labels=labels, class_names=list(dataset.class_names),
        metadata={
            "samples_from": samples_from,
            "source_preprocessing": dataset.source_preprocessing,
            "decision_threshold": model_version.decision_threshold,
            "decision_rule": (
                "most probable class" if model_version.decision_threshold is None else
                "class 1 when its probability >= decision_threshold, else class 0"
            ),
        },
    )
    for stale in folder.glob(f"{variant}-*.zip"):
        if stale != out:
            stale.unlink(missing_ok=True)
    return out


# --- Deleting a model ----------------------------------------------------------------------------


class ModelDeleteError(Exception):
    """A model that cannot be deleted while something else still uses it; the message says what."""


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _delete_stored_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:  # the rows are gone already; a leftover file is logged, not raised
            logger.warning("could not delete %s from storage", name, exc_info=True)


def _delete_local_copies(sha256: str) -> None:
    """This host's verified copy of an artifact, its ONNX conversion and its export bundles."""
    cache = model_cache_dir()
    paths = [cache / f"{sha256}.keras", cache / f"{sha256}.onnx"]
    paths += (Path(settings.WORK_DIR) / "exports").glob(f"{sha256[:16]}-*.zip")
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not delete %s", path, exc_info=True)


def model_version_delete(*, model_version: ModelVersion) -> None:
    """Delete a model, its evaluations and its owner's predictions made with it; once that is
    committed, their stored files (artifact, evaluation probabilities, prediction images) and
    this host's cached copies of the artifact (``.keras``, ``.onnx``, export bundles).

    Refused while someone else still relies on the model: an alias points at it (users of its
    dataset are served it), another user's prediction was made with it, or a batch inference
    job ran it (deleting the model would take those rows with it and leave their files). The
    training job that produced the model is kept; it no longer links to a model.

    Raises:
        ModelDeleteError: saying what still uses the model; nothing is changed.
    """
    with transaction.atomic():
        # The lock waits for, and then holds off, rows that are being linked to the model (an
        # alias, a prediction, a job), so none appears between the checks and the delete.
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        aliases = list(locked.aliases.select_related("dataset"))
        if aliases:
            named = ", ".join(f"'{alias.name}' of {alias.dataset}" for alias in aliases)
            raise ModelDeleteError(
                f"{locked} is the {named}; promote another model, roll the alias back or "
                "remove it first"
            )
        others = locked.predictions.exclude(owner_id=locked.owner_id).count()
        if others:
            raise ModelDeleteError(
                f"other users have {_counted(others, 'prediction')} made with {locked}; "
                "they keep their history"
            )
        jobs = locked.inference_jobs.count()
        if jobs:
            raise ModelDeleteError(
                f"{_counted(jobs, 'batch inference job')} ran {locked}; the results would go "
                "with it"
            )
        artifact, sha256 = locked.artifact.name, locked.sha256
        files = [artifact] if artifact else []
        files += [e.probabilities.name for e in locked.evaluations.all() if e.probabilities]
        files += [p.image.name for p in locked.predictions.all() if p.image]
        locked.delete()
        if artifact and ModelVersion.objects.filter(artifact=artifact).exists():
            files.remove(artifact)  # another model row names the same file: keep it
        transaction.on_commit(lambda: _delete_stored_files(files))
        # Local copies are named by content: keep them while another model has the same bytes.
        if re.fullmatch(r"[0-9a-f]{64}", sha256) and not ModelVersion.objects.filter(
                sha256=sha256).exists():
            transaction.on_commit(lambda: _delete_local_copies(sha256))
