"""Evaluation beyond the basic metrics: calibration, ROC curves, confidence intervals, paired tests.

:func:`full_report` extends :func:`medml.evaluate.classification_metrics` with calibration
(expected calibration error, Brier score, reliability-diagram bins), ROC curves and percentile
bootstrap confidence intervals. :func:`mcnemar` tests whether two models that classified the same
images differ in accuracy. :func:`choose_threshold` picks a two-class decision threshold that
reaches a target sensitivity on the validation split.

Point estimates come from scikit-learn. The bootstrap replicates are computed for all resamples
at once from resampling counts (a resample is "image ``i`` drawn ``w_i`` times"), which gives the
same numbers as calling scikit-learn on each resample, a thousand times faster; the tests check
the two against each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats
from sklearn.metrics import auc, brier_score_loss, roc_curve

from medml.evaluate import _normalise_rows, classification_metrics

CALIBRATION_BINS = 15
MAX_ROC_POINTS = 200
CONFIDENCE_LEVEL = 0.95
# Below this many discordant pairs McNemar's chi-square approximation is poor; the exact
# binomial test is used instead.
MCNEMAR_EXACT_BELOW = 25
# Class names that mark the clinically positive class of a two-class dataset ("malignant" in
# BreastMNIST, whose label 0 is malignant; "pneumonia" in PneumoniaMNIST, label 1).
POSITIVE_CLASS_WORDS = ("malignant", "cancer", "tumor", "tumour", "pneumonia", "abnormal",
                        "disease", "positive", "lesion")
# Resamples evaluated together; bounds the memory of the (resamples x images) count matrix.
_BOOTSTRAP_CHUNK = 250


def full_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float | None = None,
    positive_class: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything the platform reports about a model on one labelled split.

    The body is :func:`~medml.evaluate.classification_metrics` at the default decision rule
    (the most probable class), so reports of different models compare like with like. The
    added keys are:

    * ``calibration``: ``ece`` (expected calibration error of the top-class confidence over
      15 equal-width bins), ``brier`` (mean over images of the summed squared difference
      between the probabilities and the one-hot label; for two classes this is twice
      scikit-learn's default binary Brier score), ``n_bins`` and ``bins`` (one
      ``{lower, upper, confidence, accuracy, count}`` per bin; ``confidence`` and ``accuracy``
      are ``None`` for an empty bin).
    * ``roc``: two classes: ``{"type": "binary", "positive_class", "fpr", "tpr",
      "thresholds"}``; more: ``{"type": "one-vs-rest", "curves": [{index, name, fpr, tpr,
      thresholds, auc}]}``. At most 200 points per curve; the first threshold, which
      scikit-learn sets to infinity (nothing predicted positive), is ``None``. A class absent
      from ``y_true`` has no curve (``None``).
    * ``confidence_intervals``: 95% percentile bootstrap intervals ``{estimate, low, high,
      resamples}`` for ``accuracy``, ``macro_f1`` and ``roc_auc`` (``low``/``high`` are
      ``None`` when too few resamples define the metric), plus ``n_bootstrap``, ``seed``,
      ``level`` and ``method``.
    * two classes only: ``binary``: ``{positive_class, positive_class_name, sensitivity,
      specificity}`` at the default rule (``None`` when ``y_true`` has no image of the class
      it is the recall of).
    * with ``threshold`` (two classes only): ``at_threshold``: the classification metrics when
      ``positive_class`` is predicted whenever its probability is ``>= threshold``, with the
      ``sensitivity`` and ``specificity`` that gives.

    Args:
        y_true: Integer labels ``(N,)``.
        probs: Probabilities ``(N, K)``.
        class_names: One name per class.
        threshold: An alternative decision threshold on ``positive_class``'s probability.
        positive_class: The clinically positive class of a two-class problem (default 1); it
            is the class whose ROC curve, sensitivity and threshold are reported.
        n_bootstrap: Bootstrap resamples for the confidence intervals (0 skips them).
        seed: Seed of the resampling; the same seed gives the same intervals.

    Returns:
        A JSON-serialisable dict.

    Raises:
        ValueError: as :func:`~medml.evaluate.classification_metrics` does.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0. Received: n_bootstrap={n_bootstrap}")
    report = classification_metrics(y_true, probs, class_names, positive_class=positive_class)
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = _normalise_rows(np.asarray(probs, dtype=np.float64))
    class_names = [str(name) for name in class_names]
    binary = len(class_names) == 2
    positive = report.get("positive_class", 1)
    y_pred = probs.argmax(axis=1)

    report["calibration"] = calibration(y_true, probs)
    report["roc"] = roc_curves(y_true, probs, class_names, positive_class=positive)
    report["confidence_intervals"] = bootstrap_intervals(
        y_true, probs, y_pred, positive_class=positive, point=report,
        n_bootstrap=n_bootstrap, seed=seed,
    )
    if binary:
        report["binary"] = _sensitivity_specificity(report, positive, class_names)
    if threshold is not None:
        at = classification_metrics(
            y_true, probs, class_names, threshold=threshold, positive_class=positive
        )
        report["at_threshold"] = {
            key: at[key] for key in (
                "threshold", "positive_class", "accuracy", "balanced_accuracy", "per_class",
                "macro_avg", "weighted_avg", "confusion_matrix", "confusion_matrix_normalized",
            )
        } | _sensitivity_specificity(at, positive, class_names)
    return report


def _sensitivity_specificity(metrics: dict, positive: int, class_names: list[str]) -> dict:
    per_class = metrics["per_class"]
    return {
        "positive_class": positive,
        "positive_class_name": class_names[positive],
        "sensitivity": _recall(per_class[positive]),
        "specificity": _recall(per_class[1 - positive]),
    }


def _recall(row: dict) -> float | None:
    # Undefined (0/0) without images of the class, where the report's 0.0 would read as "none found".
    return row["recall"] if row["support"] else None


# --- Calibration ---------------------------------------------------------------------------------


def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error, Brier score and reliability-diagram bins (see :func:`full_report`).

    Bins are ``(lower, upper]`` over the top-class confidence, the first one closed at 0. The
    ECE is ``sum(count / N * |accuracy - confidence|)`` over the non-empty bins.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(bin_ids, minlength=n_bins)
    confidence_sums = np.bincount(bin_ids, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(bin_ids, weights=correct, minlength=n_bins)
    bins, ece = [], 0.0
    for index in range(n_bins):
        count = int(counts[index])
        mean_confidence = confidence_sums[index] / count if count else None
        accuracy = correct_sums[index] / count if count else None
        if count:
            ece += count / len(y_true) * abs(accuracy - mean_confidence)
        bins.append({
            "lower": float(edges[index]), "upper": float(edges[index + 1]),
            "confidence": None if mean_confidence is None else float(mean_confidence),
            "accuracy": None if accuracy is None else float(accuracy),
            "count": count,
        })
    # Exactly normalised here: scikit-learn warns about float32 rounding in the sums.
    exact = probs / probs.sum(axis=1, keepdims=True)
    brier = brier_score_loss(y_true, exact, labels=list(range(num_classes)), scale_by_half=False)
    return {"ece": float(ece), "brier": float(brier), "n_bins": n_bins, "bins": bins}


# --- ROC curves ------------------------------------------------------------------------------------


def roc_curves(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], *, positive_class: int = 1
) -> dict:
    """ROC curves: of ``positive_class`` for two classes, one-vs-rest per class for more."""
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        curve = _roc_curve(y_true == positive_class, probs[:, positive_class])
        return {"type": "binary", "positive_class": positive_class,
                **(curve or {"fpr": [], "tpr": [], "thresholds": []})}
    curves = []
    for index, name in enumerate(class_names):
        curve = _roc_curve(y_true == index, probs[:, index])
        curves.append(None if curve is None else {"index": index, "name": str(name), **curve})
    return {"type": "one-vs-rest", "curves": curves}


def _roc_curve(positives: np.ndarray, scores: np.ndarray) -> dict | None:
    if positives.all() or not positives.any():
        return None
    fpr, tpr, thresholds = roc_curve(positives, scores)
    area = float(auc(fpr, tpr))  # of the full curve, before thinning it for display
    keep = _downsample(len(fpr), MAX_ROC_POINTS)
    return {
        "fpr": [float(v) for v in fpr[keep]],
        "tpr": [float(v) for v in tpr[keep]],
        "thresholds": [float(v) if math.isfinite(v) else None for v in thresholds[keep]],
        "auc": area,
    }


def _downsample(length: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` evenly spread points, always the first and the last."""
    if length <= limit:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, limit)).astype(int))


# --- Bootstrap confidence intervals -------------------------------------------------------------


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The ``(n_bootstrap, n)`` image indices of every resample, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def bootstrap_replicates(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, *, positive_class: int,
    n_bootstrap: int, seed: int,
) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 and ROC AUC of every resample of :func:`bootstrap_indices`.

    Equal to ``accuracy_score``, ``f1_score(average="macro")`` (over the classes in the
    resample's labels or predictions, as :func:`~medml.evaluate.classification_metrics`) and
    :func:`medml.evaluate.roc_auc` on each resample; AUC is ``NaN`` for a resample that misses a
    class.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    num_classes = probs.shape[1]
    n = len(y_true)
    indices = bootstrap_indices(n, n_bootstrap, seed)
    correct = (y_pred == y_true).astype(np.float64)
    true_onehot = np.eye(num_classes)[y_true]
    pred_onehot = np.eye(num_classes)[y_pred]
    out: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": [], "roc_auc": []}
    for start in range(0, n_bootstrap, _BOOTSTRAP_CHUNK):
        chunk = indices[start : start + _BOOTSTRAP_CHUNK]
        # Row r counts how often each image was drawn into resample r.
        offsets = np.arange(len(chunk))[:, None] * n
        weights = np.bincount((chunk + offsets).ravel(), minlength=len(chunk) * n)
        weights = weights.reshape(len(chunk), n).astype(np.float64)

        out["accuracy"].append(weights @ correct / n)
        true_positives = weights @ (true_onehot * correct[:, None])
        denominators = weights @ pred_onehot + weights @ true_onehot
        with np.errstate(divide="ignore", invalid="ignore"):
            # NaN (left out of the mean) for a class neither in the resample nor predicted in it.
            f1 = np.where(denominators > 0, 2 * true_positives / denominators, np.nan)
        out["macro_f1"].append(np.nanmean(f1, axis=1))
        if num_classes == 2:
            auc = _weighted_auc(y_true == positive_class, probs[:, positive_class], weights)
        else:
            auc = np.mean([_weighted_auc(y_true == c, probs[:, c], weights)
                           for c in range(num_classes)], axis=0)
        out["roc_auc"].append(auc)
    return {key: np.concatenate(values) for key, values in out.items()}


def _weighted_auc(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The Mann-Whitney AUC (ties count half) of each row of ``weights``; NaN without both classes."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    is_positive = positives[order]
    pos = np.add.reduceat(w * is_positive, starts, axis=1)
    neg = np.add.reduceat(w * ~is_positive, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * (neg_below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def bootstrap_intervals(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, *, positive_class: int,
    point: dict, n_bootstrap: int, seed: int,
) -> dict:
    """Percentile intervals around the point estimates in ``point`` (a classification report)."""
    estimates = {
        "accuracy": point["accuracy"],
        "macro_f1": point["macro_avg"]["f1"],
        "roc_auc": point["roc_auc"],
    }
    result: dict = {"n_bootstrap": n_bootstrap, "seed": seed, "level": CONFIDENCE_LEVEL,
                    "method": "percentile bootstrap"}
    replicates = (
        bootstrap_replicates(y_true, probs, y_pred, positive_class=positive_class,
                             n_bootstrap=n_bootstrap, seed=seed)
        if n_bootstrap else {}
    )
    tail = (1 - CONFIDENCE_LEVEL) / 2 * 100
    for name, estimate in estimates.items():
        values = replicates.get(name, np.empty(0))
        values = values[np.isfinite(values)]
        # Fewer than 20 defined resamples cannot place a 95% interval's ends.
        defined = estimate is not None and len(values) >= 20
        low, high = np.percentile(values, [tail, 100 - tail]) if defined else (None, None)
        result[name] = {
            "estimate": estimate,
            "low": None if low is None else float(low),
            "high": None if high is None else float(high),
            "resamples": len(values),
        }
    return result


# --- Paired comparison ---------------------------------------------------------------------------


def mcnemar(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """McNemar's test of two classifiers' predictions on the same images.

    ``b`` counts images model A got right and model B wrong, ``c`` the reverse. With fewer than
    25 such discordant images the exact two-sided binomial test is used (``statistic`` is then
    ``min(b, c)``); otherwise the chi-square test with continuity correction,
    ``max(|b - c| - 1, 0)^2 / (b + c)`` on one degree of freedom (the correction never makes
    the difference larger than it is: ``b == c`` gives 0 and a p-value of 1).

    Returns:
        ``{b, c, statistic, p_value, method}``; ``p_value`` is 1.0 when the models never
        disagree on correctness.

    Raises:
        ValueError: when the three arrays differ in length or are empty.
    """
    y_true = np.asarray(y_true).reshape(-1)
    pred_a = np.asarray(pred_a).reshape(-1)
    pred_b = np.asarray(pred_b).reshape(-1)
    if not len(y_true) == len(pred_a) == len(pred_b):
        raise ValueError(
            "y_true, pred_a and pred_b must have one entry per image. "
            f"Received lengths: {len(y_true)}, {len(pred_a)}, {len(pred_b)}"
        )
    if len(y_true) == 0:
        raise ValueError("McNemar's test needs at least one image.")
    a_right = pred_a == y_true
    b_right = pred_b == y_true
    b = int(np.sum(a_right & ~b_right))
    c = int(np.sum(~a_right & b_right))
    if b + c < MCNEMAR_EXACT_BELOW:
        statistic = float(min(b, c))
        p_value = 1.0 if b + c == 0 else float(scipy_stats.binomtest(b, b + c, 0.5).pvalue)
        method = "exact binomial"
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / (b + c)
        p_value = float(scipy_stats.chi2.sf(statistic, df=1))
        method = "chi-square with continuity correction"
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": min(p_value, 1.0),
            "method": method}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing them together, in the given order.

    The smallest p-value is multiplied by the number of tests, the next by one less, and so on,
    each kept at least as large as the one before and at most 1. An adjusted p-value below
    ``alpha`` rejects its hypothesis with a family-wise error rate of at most ``alpha``.
    """
    count = len(p_values)
    adjusted = [1.0] * count
    running = 0.0
    for rank, index in enumerate(sorted(range(count), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


# --- Decision thresholds -----------------------------------------------------------------------


def default_positive_class(class_names: Sequence[str]) -> int:
    """The clinically positive class of a two-class dataset, read from its class names.

    The first class whose name mentions a finding (``malignant``, ``pneumonia``, ...) is
    positive; without one, class 1. BreastMNIST's ``["malignant", "normal, benign"]`` gives 0.
    """
    if len(class_names) != 2:
        raise ValueError(f"A positive class needs two classes. Received: {len(class_names)}")
    for index, name in enumerate(class_names):
        lowered = str(name).lower()
        if any(word in lowered for word in POSITIVE_CLASS_WORDS):
            return index
    return 1


def choose_threshold(
    y_true_val: np.ndarray,
    prob_positive_val: np.ndarray,
    *,
    target_sensitivity: float,
    positive_class: int,
) -> dict:
    """The largest threshold that still finds ``target_sensitivity`` of the positive images.

    A threshold ``t`` predicts ``positive_class`` when its probability is ``>= t``; lowering
    it can only raise the sensitivity (the positive class's recall), so the largest ``t`` that
    reaches the target is the one that costs the fewest false positives. Choose it on the
    validation split; the test split then measures it.

    Args:
        y_true_val: Validation labels ``(N,)``.
        prob_positive_val: Validation probabilities of ``positive_class`` ``(N,)``.
        target_sensitivity: Wanted sensitivity, in ``(0, 1]``.
        positive_class: The label of the positive class.

    Returns:
        ``{threshold, sensitivity, specificity, target_sensitivity, positive_class,
        n_positive, n_negative}`` with the validation sensitivity and specificity at
        ``threshold``.

    Raises:
        ValueError: for a target outside ``(0, 1]``, mismatched lengths, NaN or infinite
            probabilities, or a split without positive images.
    """
    y_true_val = np.asarray(y_true_val).astype(np.int64).reshape(-1)
    scores = np.asarray(prob_positive_val, dtype=np.float64).reshape(-1)
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(
            f"target_sensitivity must be in (0, 1]. Received: {target_sensitivity}"
        )
    if len(y_true_val) != len(scores):
        raise ValueError(
            "y_true_val and prob_positive_val differ in length. "
            f"Received: {len(y_true_val)} and {len(scores)}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("prob_positive_val contains NaN or infinity.")
    positives = y_true_val == positive_class
    if not positives.any():
        raise ValueError(f"The validation labels contain no positive (class {positive_class}) image.")
    if positives.all():
        # Every threshold at or below the smallest score finds every image: take that score.
        return {"threshold": float(scores.min()), "sensitivity": 1.0, "specificity": None,
                "target_sensitivity": float(target_sensitivity), "positive_class": positive_class,
                "n_positive": int(positives.sum()), "n_negative": 0}
    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    # tpr is a count ratio; the tolerance keeps e.g. 9/10 from missing a typed-in 0.9.
    index = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    return {
        "threshold": float(thresholds[index]),
        "sensitivity": float(tpr[index]),
        "specificity": float(1.0 - fpr[index]),
        "target_sensitivity": float(target_sensitivity),
        "positive_class": int(positive_class),
        "n_positive": int(positives.sum()),
        "n_negative": int((~positives).sum()),
    }


def binary_probabilities(probs: np.ndarray) -> np.ndarray:
    """Two-class probabilities rebuilt from class 1's, so that ``p0 == 1 - p1`` exactly.

    Softmax outputs sum to 1 only up to rounding; serving compares class 1's probability with
    the decision threshold. Deriving class 0's from it makes "``p0 >= t``" and
    "``p1 <= 1 - t``" the same decision, so a threshold chosen on class 0 is served exactly.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"probs must have shape (N, 2). Received: shape={probs.shape}")
    p1 = probs[:, 1].astype(np.float64)
    return np.stack([1.0 - p1, p1], axis=1)


def class_one_threshold(threshold: float, positive_class: int) -> float:
    """``threshold`` on ``positive_class``'s probability, as a threshold on class 1's.

    Serving predicts class 1 when ``p1 >= decision_threshold``. For ``positive_class == 0``
    and probabilities from :func:`binary_probabilities`, "``p0 >= threshold``" means
    "``p1 <= 1 - threshold``", i.e. class 1 only when ``p1`` is strictly above ``1 - threshold``:
    the next float32 value (model outputs are float32).
    """
    if positive_class == 1:
        return float(threshold)
    if positive_class != 0:
        raise ValueError(f"positive_class must be 0 or 1. Received: {positive_class}")
    boundary = np.float32(1.0 - threshold)
    return float(np.nextafter(boundary, np.float32(np.inf)))


def positive_class_threshold(decision_threshold: float, positive_class: int) -> float:
    """The inverse of :func:`class_one_threshold`: the served rule as a threshold on the positive class.

    With probabilities from :func:`binary_probabilities`, "``p[positive] >= result``" decides
    exactly as serving's "``p1 >= decision_threshold``" does for float32 outputs.
    """
    if positive_class == 1:
        return float(decision_threshold)
    if positive_class != 0:
        raise ValueError(f"positive_class must be 0 or 1. Received: {positive_class}")
    below = np.nextafter(np.float32(decision_threshold), np.float32(-np.inf))
    return float(1.0 - np.float64(below))
