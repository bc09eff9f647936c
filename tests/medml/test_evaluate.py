import json
import math

import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from medml.evaluate import classification_metrics, predict_proba, roc_auc

# Two negatives scored 0.1 and 0.6, two positives 0.4 and 0.8: three of the four
# positive/negative pairs are ranked correctly, so the AUC is 0.75.
BINARY_LABELS = np.array([0, 0, 1, 1])
BINARY_PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])

# Per class one-vs-rest AUC: class 0 ranks both positives first (1.0); class 1 has 7 of 8 pairs
# right (0.875); class 2 has 4 of 8 right plus two ties counted half (0.625).
MULTI_LABELS = np.array([0, 0, 1, 1, 2, 2])
MULTI_PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.4, 0.3],
        [0.1, 0.7, 0.2],
        [0.2, 0.3, 0.5],
        [0.4, 0.5, 0.1],
    ]
)


def one_hot(predictions: list[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[predictions]


def test_binary_confusion_matrix_accuracy_and_auc():
    metrics = classification_metrics(BINARY_LABELS, BINARY_PROBS, ["neg", "pos"])

    # Most probable class: [0, 1, 0, 1].
    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics["confusion_matrix_normalized"] == [[0.5, 0.5], [0.5, 0.5]]
    assert metrics["accuracy"] == 0.5
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["roc_auc_note"] is None
    assert metrics["n"] == 4
    assert metrics["positive_class"] == 1
    assert metrics["threshold"] is None


def test_a_threshold_changes_the_predictions_but_not_the_auc():
    low = classification_metrics(BINARY_LABELS, BINARY_PROBS, ["neg", "pos"], threshold=0.35)
    high = classification_metrics(BINARY_LABELS, BINARY_PROBS, ["neg", "pos"], threshold=0.7)

    assert low["confusion_matrix"] == [[1, 1], [0, 2]]
    assert low["accuracy"] == 0.75
    assert high["confusion_matrix"] == [[2, 0], [1, 1]]
    assert low["roc_auc"] == high["roc_auc"] == pytest.approx(0.75)
    assert low["threshold"] == 0.35


def test_the_threshold_applies_to_the_chosen_positive_class():
    # Class 0 is positive when its probability is >= 0.5: predictions [0, 1, 0, 1].
    metrics = classification_metrics(
        BINARY_LABELS, BINARY_PROBS, ["malignant", "benign"], threshold=0.5, positive_class=0
    )

    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics["positive_class"] == 0
    assert metrics["roc_auc"] == pytest.approx(0.75)


def test_per_class_scores_and_macro_f1_from_known_counts():
    # Predictions [0, 1, 1, 1, 2, 0]. Class 0: precision 1/2, recall 1/2, F1 0.5.
    # Class 1: precision 2/3, recall 1, F1 0.8. Class 2: precision 1, recall 1/2, F1 2/3.
    probs = one_hot([0, 1, 1, 1, 2, 0], 3)
    metrics = classification_metrics(MULTI_LABELS, probs, ["a", "b", "c"])

    per_class = {row["name"]: row for row in metrics["per_class"]}
    assert per_class["a"]["f1"] == pytest.approx(0.5)
    assert per_class["b"]["precision"] == pytest.approx(2 / 3)
    assert per_class["b"]["f1"] == pytest.approx(0.8)
    assert per_class["c"]["recall"] == pytest.approx(0.5)
    assert per_class["c"]["support"] == 2
    assert metrics["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_multiclass_auc_is_the_one_vs_rest_macro_average():
    metrics = classification_metrics(MULTI_LABELS, MULTI_PROBS, ["a", "b", "c"])

    assert metrics["roc_auc_per_class"] == pytest.approx([1.0, 0.875, 0.625])
    assert metrics["roc_auc"] == pytest.approx((1.0 + 0.875 + 0.625) / 3)
    assert "positive_class" not in metrics


def test_log_loss_is_the_mean_negative_log_probability_of_the_true_class():
    metrics = classification_metrics(
        np.array([0, 1]), np.array([[0.8, 0.2], [0.4, 0.6]]), ["a", "b"]
    )

    assert metrics["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_a_class_absent_from_the_labels_gives_no_auc_and_no_crash():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])

    metrics = classification_metrics(labels, probs, ["a", "b", "c"])

    assert metrics["roc_auc"] is None
    assert "[2]" in metrics["roc_auc_note"]
    assert metrics["roc_auc_per_class"][2] is None
    assert metrics["per_class"][2]["support"] == 0
    assert metrics["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    json.dumps(metrics)


def test_macro_averages_leave_out_a_class_neither_in_the_labels_nor_predicted():
    # A perfect model on a split without class c: c's F1 is 0/0, not 0, so the macro F1 is 1
    # (as scikit-learn's f1_score(average="macro") gives), not 2/3.
    labels = np.array([0, 0, 1, 1])
    probs = one_hot([0, 0, 1, 1], 3) * 0.9 + 0.1 / 3

    metrics = classification_metrics(labels, probs, ["a", "b", "c"])

    assert metrics["macro_avg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4}
    assert metrics["macro_avg"]["f1"] == f1_score(labels, probs.argmax(axis=1), average="macro")
    assert metrics["per_class"][2]["support"] == 0


def test_macro_averages_count_a_class_predicted_but_absent_from_the_labels():
    # Predictions [0, 2, 1, 1]: class 2 has a false positive, so it counts (F1 0).
    labels = np.array([0, 0, 1, 1])
    probs = one_hot([0, 2, 1, 1], 3)

    metrics = classification_metrics(labels, probs, ["a", "b", "c"])

    assert metrics["macro_avg"]["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["macro_avg"]["f1"] == pytest.approx(
        f1_score(labels, probs.argmax(axis=1), average="macro"))
    assert metrics["macro_avg"]["precision"] == pytest.approx(
        precision_score(labels, probs.argmax(axis=1), average="macro", zero_division=0))
    assert metrics["macro_avg"]["recall"] == pytest.approx(
        recall_score(labels, probs.argmax(axis=1), average="macro", zero_division=0))


def test_roc_auc_is_undefined_for_nan_probabilities():
    # A row of NaN used to be normalised to a uniform row first and the AUC reported as 1.0.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8], [0.3, 0.7]])

    auc, note = roc_auc(labels, probs)

    assert auc is None
    assert "NaN" in note


def test_the_result_is_plain_json():
    metrics = classification_metrics(MULTI_LABELS, MULTI_PROBS, ["a", "b", "c"])

    assert json.loads(json.dumps(metrics)) == metrics


def test_roc_auc_explains_when_it_is_undefined():
    auc, note = roc_auc(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))

    assert auc is None
    assert "0" in note


@pytest.mark.parametrize(
    ("labels", "probs", "kwargs"),
    [
        (np.array([0, 1]), np.ones((3, 2)) / 2, {}),
        (np.array([0, 3]), np.ones((2, 2)) / 2, {}),
        (np.array([], dtype=int), np.zeros((0, 2)), {}),
        (MULTI_LABELS, MULTI_PROBS, {"threshold": 0.5}),
        (BINARY_LABELS, BINARY_PROBS, {"threshold": 1.5}),
    ],
)
def test_it_rejects_inconsistent_input(labels, probs, kwargs):
    names = [f"c{i}" for i in range(probs.shape[1])]
    with pytest.raises(ValueError):
        classification_metrics(labels, probs, names, **kwargs)


def _asymmetric_model() -> keras.Model:
    # Softmax over the mean of the left half and the top half of the image: flips change it.
    inputs = keras.Input(shape=(4, 4, 1), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    weights = np.zeros((16, 2), dtype="float32")
    weights[:, 0] = np.tile([1, 1, 0, 0], 4)
    weights[:, 1] = np.repeat([1, 1, 0, 0], 4)
    dense = keras.layers.Dense(2, activation="softmax", use_bias=False, name="predictions")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    dense.set_weights([weights])
    return model


def test_predict_proba_runs_in_batches_and_matches_the_model():
    model = _asymmetric_model()
    images = np.random.default_rng(0).integers(0, 256, size=(10, 4, 4, 1)).astype("uint8")

    probs = predict_proba(model, images, batch_size=3)

    assert probs.shape == (10, 2)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, model(images, training=False).numpy(), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_test_time_augmentation_averages_the_image_and_its_two_flips():
    model = _asymmetric_model()
    images = np.random.default_rng(1).integers(0, 256, size=(5, 4, 4, 1)).astype("uint8")

    probs = predict_proba(model, images, batch_size=2, tta=True)

    expected = (
        model(images).numpy() + model(images[:, :, ::-1]).numpy() + model(images[:, ::-1]).numpy()
    ) / 3
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    assert not np.allclose(probs, predict_proba(model, images))


def test_the_compiled_prediction_function_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = _asymmetric_model()
    predict_proba(model, np.zeros((2, 4, 4, 1), dtype=np.uint8))
    reference = weakref.ref(model)

    del model
    gc.collect()

    assert reference() is None
