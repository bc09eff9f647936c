"""Calibration, ROC curves, bootstrap intervals, McNemar's test and threshold choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score

from medml.evaluate import classification_metrics, roc_auc
from medml.stats import (
    binary_probabilities,
    bootstrap_indices,
    bootstrap_intervals,
    bootstrap_replicates,
    calibration,
    choose_threshold,
    class_one_threshold,
    default_positive_class,
    full_report,
    mcnemar,
    positive_class_threshold,
    roc_curves,
)


def top_class_probs(confidences: list[float], predicted: list[int], num_classes: int) -> np.ndarray:
    """Rows whose top class is ``predicted`` with probability ``confidence``, the rest spread evenly."""
    probs = np.zeros((len(confidences), num_classes))
    for row, (confidence, index) in enumerate(zip(confidences, predicted, strict=True)):
        probs[row] = (1 - confidence) / (num_classes - 1)
        probs[row, index] = confidence
    return probs


# --- Calibration ---------------------------------------------------------------------------------


def test_the_expected_calibration_error_of_a_small_example_matches_the_hand_computed_value():
    # Confidences .95 (right), .81 (right), .85 (wrong), .71 (right), .62 (wrong). With 15 bins
    # of width 1/15, .81 and .85 share the bin (.800, .867]: accuracy 1/2, mean confidence .83.
    # ECE = (.05 + 2 * |.5 - .83| + .29 + .62) / 5 = .324.
    y_true = np.array([0, 1, 0, 2, 1])
    probs = top_class_probs([0.95, 0.81, 0.85, 0.71, 0.62], [0, 1, 1, 2, 2], 3)

    result = calibration(y_true, probs)

    assert result["ece"] == pytest.approx(0.324)
    assert result["n_bins"] == 15 and len(result["bins"]) == 15
    shared = result["bins"][12]
    assert shared["lower"] == pytest.approx(12 / 15) and shared["upper"] == pytest.approx(13 / 15)
    assert shared["count"] == 2
    assert shared["accuracy"] == pytest.approx(0.5)
    assert shared["confidence"] == pytest.approx(0.83)
    assert [b["count"] for b in result["bins"]] == [0] * 9 + [1, 1, 0, 2, 0, 1]
    assert result["bins"][0]["accuracy"] is None and result["bins"][0]["confidence"] is None


def test_a_perfectly_calibrated_split_has_zero_calibration_error():
    # Four images at confidence .75 of which three are right.
    y_true = np.array([0, 0, 0, 1])
    probs = np.array([[0.75, 0.25]] * 4)
    assert calibration(y_true, probs)["ece"] == pytest.approx(0.0)


def test_the_brier_score_sums_the_squared_errors_over_classes_and_averages_over_images():
    # Per image: (.3² + .2² + .1²) = .14, (.1² + .2² + .1²) = .06, (.2² + .3² + .5²) = .38.
    y_true = np.array([0, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    assert calibration(y_true, probs)["brier"] == pytest.approx(0.58 / 3)

    # For two classes that is twice scikit-learn's binary Brier score of the positive class.
    y_binary = np.array([0, 1, 1, 0])
    p1 = np.array([0.2, 0.7, 0.4, 0.1])
    binary = np.stack([1 - p1, p1], axis=1)
    assert calibration(y_binary, binary)["brier"] == pytest.approx(2 * brier_score_loss(y_binary, p1))


# --- ROC curves ----------------------------------------------------------------------------------


def test_a_binary_roc_curve_is_thinned_to_200_points_and_keeps_both_ends():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 3000)
    p1 = np.clip(rng.normal(0.35 + 0.3 * y_true, 0.2), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)

    curve = roc_curves(y_true, probs, ["a", "b"], positive_class=1)

    assert curve["type"] == "binary"
    assert 100 < len(curve["fpr"]) <= 200
    assert len(curve["fpr"]) == len(curve["tpr"]) == len(curve["thresholds"])
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert curve["thresholds"][0] is None  # "nothing positive", infinite in scikit-learn
    assert curve["auc"] == pytest.approx(roc_auc(y_true, probs)[0])
    json.dumps(curve, allow_nan=False)


def test_the_binary_roc_curve_is_of_the_chosen_positive_class():
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    malignant = roc_curves(y_true, probs, ["malignant", "benign"], positive_class=0)
    benign = roc_curves(y_true, probs, ["malignant", "benign"], positive_class=1)
    assert malignant["positive_class"] == 0 and benign["positive_class"] == 1
    # Thresholds are scores of the positive class: .6 is class 0's second image, .55 class 1's.
    assert 0.6 in malignant["thresholds"] and 0.55 not in malignant["thresholds"]
    assert 0.55 in benign["thresholds"] and 0.6 not in benign["thresholds"]
    # At class 0's threshold .6 both malignant images are found and no benign one.
    at = malignant["thresholds"].index(0.6)
    assert (malignant["fpr"][at], malignant["tpr"][at]) == (0.0, 1.0)


def test_multi_class_roc_curves_are_one_vs_rest_and_missing_for_an_absent_class():
    y_true = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1],
                      [0.4, 0.3, 0.3]])
    curves = roc_curves(y_true, probs, ["a", "b", "c"])
    assert curves["type"] == "one-vs-rest"
    assert [c and c["name"] for c in curves["curves"]] == ["a", "b", None]
    assert curves["curves"][0]["auc"] == pytest.approx(1.0)


# --- Bootstrap -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_split():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probs


def test_bootstrap_replicates_equal_scikit_learn_on_the_same_resamples(noisy_split):
    y_true, probs = noisy_split
    y_pred = probs.argmax(axis=1)
    replicates = bootstrap_replicates(y_true, probs, y_pred, positive_class=1, n_bootstrap=40,
                                      seed=3)
    for row, indices in enumerate(bootstrap_indices(len(y_true), 40, 3)):
        y, p = y_true[indices], probs[indices]
        assert replicates["accuracy"][row] == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
        assert replicates["macro_f1"][row] == pytest.approx(
            f1_score(y, p.argmax(axis=1), average="macro")
        )
        expected_auc = roc_auc(y, p)[0]
        if expected_auc is None:
            assert math.isnan(replicates["roc_auc"][row])
        else:
            assert replicates["roc_auc"][row] == pytest.approx(expected_auc)


def test_bootstrap_intervals_contain_the_estimate_and_repeat_with_the_same_seed(noisy_split):
    y_true, probs = noisy_split
    first = full_report(y_true, probs, ["a", "b", "c"], n_bootstrap=300, seed=11)
    again = full_report(y_true, probs, ["a", "b", "c"], n_bootstrap=300, seed=11)
    other = full_report(y_true, probs, ["a", "b", "c"], n_bootstrap=300, seed=12)

    intervals = first["confidence_intervals"]
    for name in ("accuracy", "macro_f1", "roc_auc"):
        interval = intervals[name]
        assert interval["low"] < interval["estimate"] < interval["high"], name
        assert interval["high"] - interval["low"] < 0.5, name
    assert intervals["accuracy"]["estimate"] == first["accuracy"]
    assert intervals["macro_f1"]["estimate"] == first["macro_avg"]["f1"]
    assert intervals["roc_auc"]["estimate"] == first["roc_auc"]
    assert intervals == again["confidence_intervals"]
    assert intervals["accuracy"] != other["confidence_intervals"]["accuracy"]
    assert intervals["level"] == 0.95 and intervals["n_bootstrap"] == 300


def test_a_full_report_is_the_basic_report_plus_calibration_curves_and_intervals(noisy_split):
    y_true, probs = noisy_split
    report = full_report(y_true, probs, ["a", "b", "c"], n_bootstrap=50)
    basic = classification_metrics(y_true, probs, ["a", "b", "c"])
    assert {key: report[key] for key in basic} == basic
    assert {"calibration", "roc", "confidence_intervals"} <= set(report)
    json.dumps(report, allow_nan=False)  # storable in a PostgreSQL JSON column


def test_bootstrap_macro_f1_leaves_out_a_class_a_resample_neither_has_nor_predicts():
    # A perfect model with one image of class 2: resamples without that image used to count its
    # F1 as 0, dragging the interval of a perfect macro F1 down to 2/3.
    y_true = np.array([0] * 10 + [1] * 10 + [2])
    probs = np.eye(3)[y_true] * 0.9 + 0.1 / 3
    report = full_report(y_true, probs, ["a", "b", "c"], n_bootstrap=200, seed=0)

    interval = report["confidence_intervals"]["macro_f1"]
    assert interval["estimate"] == report["macro_avg"]["f1"] == 1.0
    assert interval["low"] == interval["high"] == 1.0
    replicates = bootstrap_replicates(y_true, probs, y_true, positive_class=1, n_bootstrap=200,
                                      seed=0)
    assert np.all(replicates["macro_f1"] == 1.0)


def test_bootstrap_percentile_intervals_cover_the_true_accuracy_about_95_percent_of_the_time():
    # 200 synthetic test sets of 100 images from a classifier whose accuracy is 0.8.
    rng = np.random.default_rng(21)
    covered = 0
    for seed in range(200):
        y_true = rng.integers(0, 2, 100)
        right = rng.random(100) < 0.8
        y_pred = np.where(right, y_true, 1 - y_true)
        probs = np.eye(2)[y_pred] * 0.8 + 0.1
        report = classification_metrics(y_true, probs, ["a", "b"])
        interval = bootstrap_intervals(y_true, probs, y_pred, positive_class=1, point=report,
                                       n_bootstrap=200, seed=seed)["accuracy"]
        covered += interval["low"] <= 0.8 <= interval["high"]
    assert 0.89 <= covered / 200 <= 0.99


def test_without_resamples_the_intervals_are_left_open():
    report = full_report([0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]],
                         ["a", "b"], n_bootstrap=0)
    assert report["confidence_intervals"]["accuracy"] == {
        "estimate": 0.5, "low": None, "high": None, "resamples": 0}


# --- McNemar ---------------------------------------------------------------------------------------


def paired_predictions(*, both_right: int, only_a: int, only_b: int, both_wrong: int):
    """Labels (all 0) and two models' predictions with the given agreement counts."""
    a = [0] * both_right + [0] * only_a + [1] * only_b + [1] * both_wrong
    b = [0] * both_right + [1] * only_a + [0] * only_b + [1] * both_wrong
    return np.zeros(len(a), dtype=int), np.array(a), np.array(b)


def test_mcnemar_uses_the_exact_binomial_test_below_25_discordant_images():
    y, a, b = paired_predictions(both_right=5, only_a=2, only_b=8, both_wrong=3)
    result = mcnemar(y, a, b)
    # Two-sided: 2 * P(X <= 2) for X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert result == {"b": 2, "c": 8, "statistic": 2.0, "p_value": pytest.approx(112 / 1024),
                      "method": "exact binomial"}


def test_mcnemar_uses_the_continuity_corrected_chi_square_from_25_discordant_images():
    y, a, b = paired_predictions(both_right=40, only_a=30, only_b=12, both_wrong=9)
    result = mcnemar(y, a, b)
    statistic = (abs(30 - 12) - 1) ** 2 / (30 + 12)  # 289 / 42
    assert result["method"] == "chi-square with continuity correction"
    assert (result["b"], result["c"]) == (30, 12)
    assert result["statistic"] == pytest.approx(289 / 42)
    # One degree of freedom: P(chi2 > x) = erfc(sqrt(x / 2)).
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))
    assert result["p_value"] == pytest.approx(scipy_stats.chi2.sf(statistic, 1))


def test_mcnemar_switches_test_exactly_at_25_discordant_images():
    assert mcnemar(*paired_predictions(both_right=1, only_a=12, only_b=12, both_wrong=0))[
        "method"] == "exact binomial"
    assert mcnemar(*paired_predictions(both_right=1, only_a=13, only_b=12, both_wrong=0))[
        "method"] == "chi-square with continuity correction"


@pytest.mark.parametrize("discordant", [13, 20, 50])
def test_mcnemar_gives_a_p_value_of_one_when_each_model_wins_equally_often(discordant):
    # The continuity correction must not turn |b - c| = 0 into 1: with b == c there is no
    # evidence of a difference, as the exact binomial test says.
    y, a, b = paired_predictions(both_right=10, only_a=discordant, only_b=discordant,
                                 both_wrong=3)
    result = mcnemar(y, a, b)

    assert result["method"] == "chi-square with continuity correction"
    assert result["statistic"] == 0.0
    assert result["p_value"] == 1.0
    assert scipy_stats.binomtest(discordant, 2 * discordant, 0.5).pvalue == 1.0
    # One more win for A can only make the difference look larger, never smaller.
    y, a, b = paired_predictions(both_right=10, only_a=discordant + 1, only_b=discordant,
                                 both_wrong=3)
    assert mcnemar(y, a, b)["p_value"] == 1.0


def test_models_that_never_disagree_on_correctness_get_a_p_value_of_one():
    y, a, b = paired_predictions(both_right=6, only_a=0, only_b=0, both_wrong=2)
    assert mcnemar(y, a, b)["p_value"] == 1.0


def test_mcnemar_rejects_predictions_of_different_lengths():
    with pytest.raises(ValueError, match="one entry per image"):
        mcnemar([0, 1], [0, 1], [0])


# --- Thresholds ------------------------------------------------------------------------------------


def test_breastmnist_names_malignant_the_positive_class():
    assert default_positive_class(["malignant", "normal, benign"]) == 0
    assert default_positive_class(["normal", "pneumonia"]) == 1
    assert default_positive_class(["cat", "dog"]) == 1


@pytest.fixture(scope="module")
def validation_split():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, 80)
    p0 = np.clip(rng.normal(0.35 + 0.3 * (y_true == 0), 0.18), 0.001, 0.999)
    return y_true, p0


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_the_chosen_threshold_is_the_largest_that_reaches_the_target_sensitivity(
        validation_split, target):
    y_true, p0 = validation_split
    chosen = choose_threshold(y_true, p0, target_sensitivity=target, positive_class=0)

    def sensitivity(threshold: float) -> float:
        return float(np.mean(p0[y_true == 0] >= threshold))

    assert sensitivity(chosen["threshold"]) >= target
    assert chosen["sensitivity"] == pytest.approx(sensitivity(chosen["threshold"]))
    above = p0[p0 > chosen["threshold"]]
    if len(above):  # the next larger score already misses the target
        assert sensitivity(above.min()) < target
    negatives = y_true == 1
    assert chosen["specificity"] == pytest.approx(np.mean(p0[negatives] < chosen["threshold"]))
    assert chosen["n_positive"] + chosen["n_negative"] == len(y_true)


def test_a_threshold_needs_a_target_in_range_and_positive_images():
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold([0, 1], [0.2, 0.8], target_sensitivity=0.0, positive_class=1)
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold([0, 0], [0.2, 0.8], target_sensitivity=0.9, positive_class=1)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 1, 1]], ids=["all positive", "mixed"])
def test_a_threshold_is_not_chosen_on_nan_probabilities(labels):
    # A diverged model: an all-positive split used to get the threshold NaN.
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold(labels, [0.2, np.nan, 0.9], target_sensitivity=0.9, positive_class=1)


def test_a_threshold_chosen_on_class_0_is_served_exactly_as_a_threshold_on_class_1():
    # float32 softmax outputs, as a model gives them: p0 + p1 is 1 only up to rounding.
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(200, 2)).astype(np.float32)
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    y_true = rng.integers(0, 2, 200)
    rebuilt = binary_probabilities(probs)
    chosen = choose_threshold(y_true, rebuilt[:, 0], target_sensitivity=0.9, positive_class=0)
    decision = class_one_threshold(chosen["threshold"], 0)

    served = np.where(probs[:, 1] >= decision, 1, 0)  # serving's rule on the raw outputs
    chosen_rule = np.where(rebuilt[:, 0] >= chosen["threshold"], 0, 1)
    assert np.array_equal(served, chosen_rule)
    assert np.mean(served[y_true == 0] == 0) == pytest.approx(chosen["sensitivity"])
    assert positive_class_threshold(decision, 0) == chosen["threshold"]
    assert class_one_threshold(0.3, 1) == positive_class_threshold(0.3, 1) == 0.3


def test_the_report_at_a_threshold_gives_sensitivity_and_specificity_of_the_positive_class():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    p0 = np.array([0.9, 0.45, 0.3, 0.4, 0.2, 0.1])
    probs = np.stack([p0, 1 - p0], axis=1)
    report = full_report(y_true, probs, ["malignant", "benign"], threshold=0.35,
                         positive_class=0, n_bootstrap=0)

    assert report["binary"] == {"positive_class": 0, "positive_class_name": "malignant",
                                "sensitivity": pytest.approx(1 / 3),
                                "specificity": pytest.approx(1.0)}
    at = report["at_threshold"]
    # Malignant when p0 >= .35: images 0, 1 (right) and 3 (wrong).
    assert at["confusion_matrix"] == [[2, 1], [1, 2]]
    assert at["sensitivity"] == pytest.approx(2 / 3)
    assert at["specificity"] == pytest.approx(2 / 3)
    assert report["accuracy"] == pytest.approx(4 / 6)  # the body stays at the default rule


@pytest.mark.parametrize("labels", [[1, 1], [[1], [1]]], ids=["flat", "(N, 1)"])
def test_sensitivity_and_specificity_of_a_class_without_images_are_undefined(labels):
    # No negative image: specificity is 0/0, not 0 (which would read as "every negative missed").
    probs = np.array([[0.3, 0.7], [0.6, 0.4]])
    report = full_report(labels, probs, ["benign", "malignant"], threshold=0.5, n_bootstrap=0)

    assert report["binary"]["sensitivity"] == 0.5
    assert report["binary"]["specificity"] is None
    assert report["at_threshold"]["sensitivity"] == 0.5
    assert report["at_threshold"]["specificity"] is None
    json.dumps(report, allow_nan=False)


def test_holm_adjusts_p_values_step_down_in_their_given_order():
    from medml.stats import holm_adjust

    # Sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> kept non-decreasing: 0.06.
    assert holm_adjust([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.2]) == [0.2]
    assert holm_adjust([]) == []
