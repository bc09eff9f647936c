"""Predictions and classification metrics.

:func:`predict_proba` runs a model over an image array in batches through one compiled function;
:func:`classification_metrics` turns labels and probabilities into a JSON-serialisable report
computed with scikit-learn.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)

if TYPE_CHECKING:  # TensorFlow loads only when a model is run: the metrics need numpy alone
    import keras
    import tensorflow as tf

# One compiled prediction function per (model, tta), dropped with the model.
_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_proba(
    model: keras.Model, images: np.ndarray, batch_size: int = 256, tta: bool = False,
    on_batch: Callable[[], None] | None = None,
) -> np.ndarray:
    """Class probabilities for ``images``.

    The model is called as ``model(x, training=False)`` inside one ``tf.function``, compiled
    once per model and reused for every batch and later call.

    Args:
        model: A model from :mod:`medml.architectures` (raw ``uint8`` images in, softmax out).
        images: ``(N, H, W, C)`` raw images.
        batch_size: Images per forward pass.
        tta: Test-time augmentation: average the probabilities of each image, its horizontal
            flip and its vertical flip.
        on_batch: Called after each batch (a training job's sign of life during evaluation).

    Returns:
        ``float32`` array of shape ``(N, num_classes)``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C). Received: shape={images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    if len(images) == 0:
        return np.zeros((0, int(model.output.shape[-1])), dtype=np.float32)
    import tensorflow as tf

    predict = _predict_function(model, tta)
    outputs = []
    for start in range(0, len(images), batch_size):
        outputs.append(predict(tf.convert_to_tensor(images[start : start + batch_size])).numpy())
        if on_batch is not None:
            on_batch()
    return np.concatenate(outputs).astype(np.float32, copy=False)


def _predict_function(model: keras.Model, tta: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    import tensorflow as tf

    functions = _PREDICT_FUNCTIONS.setdefault(model, {})
    if tta not in functions:
        # A weak reference: the cache entry must not keep its own key (the model) alive.
        model_ref = weakref.ref(model)

        # No AutoGraph: the function has no tensor-dependent Python control flow to convert.
        @tf.function(reduce_retracing=True, autograph=False)
        def predict(x: tf.Tensor) -> tf.Tensor:
            current = model_ref()
            probs = tf.cast(current(x, training=False), tf.float32)
            if tta:
                probs += tf.cast(current(tf.reverse(x, axis=[2]), training=False), tf.float32)
                probs += tf.cast(current(tf.reverse(x, axis=[1]), training=False), tf.float32)
                probs /= 3.0
            return probs

        functions[tta] = predict
    return functions[tta]


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float | None = None,
    positive_class: int | None = None,
) -> dict:
    """Classification metrics of predicted probabilities against true labels.

    Predictions are the most probable class, except for two classes with ``threshold``: then
    the prediction is ``positive_class`` when its probability is ``>= threshold`` and the other
    class otherwise.

    Args:
        y_true: Integer labels ``(N,)`` in ``range(len(class_names))``.
        probs: Probabilities ``(N, K)``; rows are renormalised to sum to 1.
        class_names: One name per class.
        threshold: Decision threshold on the positive class's probability (two classes only).
        positive_class: The class treated as positive for ``threshold`` (two classes only);
            defaults to 1.

    Returns:
        A JSON-serialisable dict with ``n``, ``accuracy``, ``balanced_accuracy``, ``per_class``
        (list of ``{index, name, precision, recall, f1, support}``; 0 where undefined),
        ``macro_avg`` (over the classes in ``y_true`` or the predictions) and ``weighted_avg``
        (``{precision, recall, f1, support}``), ``confusion_matrix`` (rows =
        true class, columns = predicted), ``confusion_matrix_normalized`` (each row divided by
        its total; all zeros for a class absent from ``y_true``), ``roc_auc`` (binary: of the
        positive class; multi-class: one-vs-rest macro average) with ``roc_auc_note`` saying why
        it is ``None`` when it cannot be computed, ``roc_auc_per_class`` (one-vs-rest, ``None``
        for an absent class), ``log_loss``, and for two classes ``positive_class`` and
        ``threshold``.

    Raises:
        ValueError: for mismatched shapes, an empty set, labels out of range, or a threshold
            with more than two classes.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    _check_inputs(y_true, probs, num_classes)
    probs = _normalise_rows(probs)
    labels = list(range(num_classes))
    binary = num_classes == 2

    if (threshold is not None or positive_class is not None) and not binary:
        raise ValueError(
            "threshold and positive_class apply to two-class problems only. "
            f"Received: {num_classes} classes"
        )
    positive = 1 if positive_class is None else int(positive_class)
    if binary and positive not in (0, 1):
        raise ValueError(f"positive_class must be 0 or 1. Received: positive_class={positive}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]. Received: threshold={threshold}")

    if binary and threshold is not None:
        y_pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    else:
        y_pred = probs.argmax(axis=1)

    report = classification_report(
        y_true,
        y_pred,
        labels=labels,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    per_class = [
        {
            "index": index,
            "name": name,
            **_report_row(report[name]),
        }
        for index, name in enumerate(class_names)
    ]
    # Averaged over the classes that occur in the labels or the predictions (scikit-learn's
    # default): a class with neither has no precision, recall or F1 (0/0) to average.
    averaged = np.union1d(y_true, y_pred)
    macro_avg = {key: float(np.mean([per_class[i][key] for i in averaged]))
                 for key in ("precision", "recall", "f1")} | {"support": len(y_true)}
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    normalized = confusion_matrix(y_true, y_pred, labels=labels, normalize="true")

    auc, auc_note = roc_auc(y_true, probs, positive_class=positive)
    metrics: dict = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "per_class": per_class,
        "macro_avg": macro_avg,
        "weighted_avg": _report_row(report["weighted avg"]),
        "confusion_matrix": counts.astype(int).tolist(),
        "confusion_matrix_normalized": np.nan_to_num(normalized).astype(float).tolist(),
        "roc_auc": auc,
        "roc_auc_note": auc_note,
        "roc_auc_per_class": _per_class_auc(y_true, probs),
        # Exactly normalised here: scikit-learn warns about float32 rounding in the sums.
        "log_loss": float(
            log_loss(y_true, probs / probs.sum(axis=1, keepdims=True), labels=labels)
        ),
    }
    if binary:
        metrics["positive_class"] = positive
        metrics["threshold"] = None if threshold is None else float(threshold)
    return metrics


def roc_auc(
    y_true: np.ndarray, probs: np.ndarray, *, positive_class: int = 1
) -> tuple[float | None, str | None]:
    """ROC AUC and, when it cannot be computed, why.

    Two classes: the AUC of ``probs[:, positive_class]`` for ``y_true == positive_class``.
    More classes: the one-vs-rest macro average over all classes. Every class must occur in
    ``y_true``, otherwise the result is ``(None, reason)``.

    Returns:
        ``(auc, None)`` or ``(None, reason)``.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    absent = sorted(set(range(num_classes)) - set(y_true.tolist()))
    if absent:
        return None, f"Undefined: class(es) {absent} do not occur in the true labels."
    # Checked before normalising, which would turn a row of NaN into a uniform one.
    if not np.all(np.isfinite(probs)):
        return None, "Undefined: the probabilities contain NaN or infinity."
    probs = _normalise_rows(probs)
    if num_classes == 2:
        auc = roc_auc_score(y_true == positive_class, probs[:, positive_class])
    else:
        auc = roc_auc_score(
            y_true, probs, multi_class="ovr", average="macro", labels=list(range(num_classes))
        )
    return float(auc), None


def _per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    aucs: list[float | None] = []
    for index in range(probs.shape[1]):
        positives = y_true == index
        if positives.all() or not positives.any():
            aucs.append(None)
        else:
            aucs.append(float(roc_auc_score(positives, probs[:, index])))
    return aucs


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # scikit-learn averages the recall over the classes present in y_true, which is the
    # definition wanted here; its warning that predictions name other classes is not news.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def _report_row(row: dict) -> dict:
    return {
        "precision": float(row["precision"]),
        "recall": float(row["recall"]),
        "f1": float(row["f1-score"]),
        "support": int(row["support"]),
    }


def _normalise_rows(probs: np.ndarray) -> np.ndarray:
    totals = probs.sum(axis=1, keepdims=True)
    # Rows that already sum to 1 are left alone: dividing by a total that is off by rounding
    # would perturb the scores by a few ulps and could break ties the ROC AUC should see.
    if np.allclose(totals, 1.0, rtol=0.0, atol=1e-6):
        return probs
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, probs / totals, 1.0 / max(probs.shape[1], 1))


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"At least 2 class names are needed. Received: {num_classes}")
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must have shape (N, {num_classes}). Received: shape={probs.shape}"
        )
    if len(y_true) != len(probs):
        raise ValueError(
            f"y_true and probs differ in length. Received: {len(y_true)} and {len(probs)}"
        )
    if len(y_true) == 0:
        raise ValueError("Cannot compute metrics of an empty set.")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(
            f"Labels must be in [0, {num_classes - 1}]. "
            f"Received: min={y_true.min()}, max={y_true.max()}"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinity.")
