"""Train a classifier: resumable, cancellable, checkpointed every epoch.

:func:`train` runs one :class:`~medml.config.TrainConfig` on one
:class:`~medml.data.DatasetArrays` in a working directory, reports progress through
:class:`TrainingHooks`, and returns a :class:`TrainResult`.

Working directory
-----------------
After every epoch the directory holds:

* ``last.keras``: the model after the latest completed epoch, optimizer state included;
* ``best.keras``: the model of the best epoch so far by ``config.monitor`` on the validation
  split (only replaced when the monitored value improves);
* ``state.json``: epochs completed, history, best epoch and value, the config, a fingerprint of
  the data, and the class weights.

``state.json`` is the commit point of an epoch. The new ``last.keras`` (and ``best.keras``) are
first written completely under temporary names; ``state.json`` is then replaced atomically and
names them as pending; finally they are renamed into place. Whenever the process dies (even by
``SIGKILL``), the next :func:`train` call on the directory finishes the renames of a committed
epoch, discards the files of an uncommitted one, and resumes after the last committed epoch.

Resuming needs the same config (``tta``, an evaluation setting, may differ) and the same data;
otherwise the old checkpoints are discarded and training starts over, with a log line saying
why. Data order, class-balanced sampling and augmentation of epoch ``e`` are drawn from
``numpy.random.default_rng([seed, e])``, so a resumed run sees the same batches as an
uninterrupted one. Randomness inside the model (dropout) and nondeterministic GPU kernels are
not replayed, so a resumed run is equivalent, not bit-identical.

Unfreezing a pretrained backbone recompiles the model with a new optimizer; whether the backbone
is frozen is stored in ``state.json`` and in the saved layers, so resuming on either side of the
unfreeze epoch continues correctly.

The test split is used once, after training, to report metrics of the best checkpoint. It never
influences a choice (best epoch, early stopping, learning rate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss
from sklearn.utils.class_weight import compute_class_weight

from medml.architectures import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    resolve_pretrained_weights,
    set_backbone_trainable,
)
from medml.augment import add_featurewise_normalization, build_augmenter
from medml.config import TrainConfig
from medml.data import DatasetArrays
from medml.evaluate import classification_metrics, predict_proba, roc_auc
from medml.runtime import configure_runtime, library_versions

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
ENSEMBLE_FILE = "ensemble.keras"  # an ensemble job's model, beside its members' folders
MEMBER_RESULT = "member.json"  # in a member's folder once it finished: a resumed job skips it
STATE_FILE = "state.json"
STATE_FORMAT = 1
_PENDING_PREFIX = ".pending-"
# Config fields that do not change training, so a checkpoint stays valid when they differ.
_EVALUATION_ONLY_FIELDS = ("tta",)
# Learning-rate factor after a pretrained backbone is unfrozen.
FINE_TUNE_LR_FACTOR = 0.1
# MedMNIST v2's step schedule: x0.1 after half of the epochs, again after three quarters.
STEP_MILESTONES = (0.5, 0.75)
STEP_FACTOR = 0.1


class TrainingDivergedError(RuntimeError):
    """Every epoch's validation probabilities were NaN or infinite: there is no model to keep."""


class TrainingHooks:
    """Callbacks from :func:`train` to its caller. Subclass and override what you need.

    All methods run in the training thread; keep them quick (throttle ``on_batch_end``).
    """

    def on_train_begin(self, *, total_epochs: int, resumed_from_epoch: int, device: str) -> None:
        """Called once the model is ready; ``resumed_from_epoch`` is 0 for a fresh start.

        ``device`` names where training runs (``""`` when nothing is trained: an ensemble whose
        members all finished earlier)."""

    def on_epoch_end(self, *, epoch: int, total_epochs: int, metrics: dict) -> None:
        """Called after epoch ``epoch`` (1-based) is checkpointed.

        ``metrics`` holds ``epoch``, ``loss``, ``accuracy`` (training, on augmented batches),
        ``val_loss``, ``val_accuracy``, ``val_auc``, ``lr``, ``seconds`` and ``augmented``.
        """

    def on_batch_end(self, *, epoch: int, batch: int, total_batches: int) -> None:
        """Called after every training step; ``batch`` counts from 1 to ``total_batches``."""

    def should_stop(self) -> bool:
        """Return ``True`` to cancel: training stops after the current batch."""
        return False

    def alive(self) -> None:
        """Called between the batches of work that is not a training step (predicting the
        validation and test splits), which can take minutes for a large model: a caller that
        watches for silent workers hears from this one meanwhile."""

    def log(self, message: str) -> None:
        """A progress message for people (device, resuming, phase changes, early stop...)."""
        logger.info(message)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        model_path: ``best.keras``, the checkpoint of the best epoch; ``None`` only when the run
            was cancelled before its first epoch completed.
        history: One dict per completed epoch (see :meth:`TrainingHooks.on_epoch_end`).
        best_epoch: 1-based epoch of ``model_path`` (0 when no epoch completed).
        best_metric: Its value of ``monitor`` (``None`` when undefined, e.g. AUC of a diverged
            model).
        monitor: The validation metric that chose the best epoch.
        epochs_completed: Epochs trained, earlier runs in the same directory included.
        cancelled: Stopped by :meth:`TrainingHooks.should_stop`; metrics are then empty.
        stopped_early: Stopped by early stopping.
        val_metrics: :func:`~medml.evaluate.classification_metrics` of the best model on the
            validation split (empty when cancelled).
        test_metrics: The same on the test split, or ``None`` (cancelled, ``evaluate_test``
            off, or no test images).
        num_params: Number of weights of the model.
        train_seconds: Sum of the epochs' durations, earlier runs included.
        device: Where training ran, e.g. ``"CPU (2 threads)"``.
        class_weight: The class weights used (``imbalance="class_weight"``), else ``None``.
        resumed_from_epoch: Epochs already completed when this call started.
        members: For an ensemble (``ensemble_size`` > 1), one dict per member: ``seed``,
            ``best_epoch``, ``best_metric``, ``epochs_completed``, ``stopped_early`` and
            ``val_accuracy``; empty for a single model.
    """

    model_path: Path | None
    history: list[dict]
    best_epoch: int
    best_metric: float | None
    monitor: str
    epochs_completed: int
    cancelled: bool
    stopped_early: bool
    val_metrics: dict
    test_metrics: dict | None
    num_params: int
    train_seconds: float
    device: str
    class_weight: dict[int, float] | None
    resumed_from_epoch: int = 0
    members: list[dict] = field(default_factory=list)


def train(
    *,
    config: TrainConfig,
    data: DatasetArrays,
    workdir: Path,
    hooks: TrainingHooks | None = None,
    weights_dir: Path | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train ``config.architecture`` on ``data``, resuming from ``workdir`` when possible.

    Args:
        config: The training recipe; validated again here.
        data: Train, val and (optionally) test splits of ``uint8`` images.
        workdir: Directory for checkpoints and state (created if missing). Use one directory
            per training job: a directory holding another run's checkpoints is cleared.
        hooks: Progress, cancellation and log callbacks.
        weights_dir: Where pretrained weights files live (``config.pretrained``); ``None``
            uses :func:`medml.architectures.default_weights_dir`.
        evaluate_test: Compute ``test_metrics`` at the end.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: for an invalid config.
        ValueError: for data that does not fit the config (missing splits, labels out of range,
            fewer than 2 classes, images smaller than the architecture takes,
            ``monitor="val_auc"`` with classes absent from the validation split); raised before
            anything is written.
        PretrainedWeightsUnavailableError: when ``config.pretrained`` and the weights file is
            missing (raised before anything is trained or written).
    """
    hooks = hooks or TrainingHooks()
    config.validate()
    _check_data(data, config)
    if config.ensemble_size > 1:
        return _train_ensemble(config=config, data=data, workdir=Path(workdir), hooks=hooks,
                               weights_dir=weights_dir, evaluate_test=evaluate_test)
    pretrained_weights = (
        resolve_pretrained_weights(config.architecture, weights_dir) if config.pretrained else None
    )
    runtime = configure_runtime(mixed_precision=config.mixed_precision)
    for note in runtime.notes:
        hooks.log(note)
    hooks.log(f"Training {config.architecture} on {runtime.device}.")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    checkpoints = _Checkpoints(workdir)
    fingerprint = dataset_fingerprint(data)
    class_weight = _class_weights(data) if config.imbalance == "class_weight" else None
    if class_weight:
        hooks.log(
            "Class weights: " + ", ".join(f"{k}: {v:.3f}" for k, v in class_weight.items())
        )

    saved = checkpoints.load_resumable_state(config, fingerprint, hooks.log)
    with runtime.distribution_strategy.scope():
        model = None
        if saved is not None:
            try:
                model = keras.models.load_model(checkpoints.last_path)
            except Exception as exc:  # any unreadable checkpoint means starting over
                hooks.log(f"Cannot load {checkpoints.last_path.name} ({exc}); starting over.")
                saved = None
        if saved is None:
            checkpoints.clear()
            state = _RunState(backbone_frozen=config.backbone_freeze_epochs > 0)
            model = _new_model(config, data, pretrained_weights)
            if state.backbone_frozen:
                set_backbone_trainable(model, False)
                hooks.log(f"Backbone frozen for {config.backbone_freeze_epochs} epoch(s).")
            _compile(model, config, learning_rate_for_epoch(config, 1))
        else:
            state = saved

    resumed_from = state.epochs_completed
    total = config.epochs
    if resumed_from:
        hooks.log(
            f"Resuming from epoch {resumed_from + 1} of {total} "
            f"(checkpoint of epoch {resumed_from} in {workdir})."
        )
    hooks.on_train_begin(total_epochs=total, resumed_from_epoch=resumed_from,
                         device=runtime.device)

    state_header = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "data_fingerprint": fingerprint,
        "monitor": config.monitor,
        "total_epochs": total,
        "class_weight": _json_class_weight(class_weight),
        "rng": {
            "seed": config.seed,
            "per_epoch_stream": "numpy.random.default_rng([seed, epoch])",
        },
        "device": runtime.device,
        "versions": library_versions(),
    }
    pipeline = _TrainPipeline(data, config, class_weight)
    val_images, val_labels = data.images("val"), data.labels("val")
    cancelled = False
    best_val_probs = None  # of the best epoch, when this process trained it
    epoch = state.epochs_completed
    while not (state.stopped_early or epoch >= total):
        epoch += 1
        if hooks.should_stop():
            cancelled = True
            break
        if state.backbone_frozen and epoch > config.backbone_freeze_epochs:
            with runtime.distribution_strategy.scope():
                set_backbone_trainable(model, True)
                _compile(model, config, learning_rate_for_epoch(config, epoch))
            state.backbone_frozen = False
            hooks.log(f"Epoch {epoch}: backbone unfrozen, learning rate divided by 10.")
        learning_rate = learning_rate_for_epoch(config, epoch)
        model.optimizer.learning_rate = learning_rate
        augmented = config.augmentation_active(epoch)
        if augmented and config.two_phase and not config.augmentation_active(epoch - 1):
            hooks.log(f"Phase 2: augmentation on from epoch {epoch}.")
        if not augmented and config.clean_final_epochs and config.augmentation_active(epoch - 1):
            hooks.log(f"Augmentation off from epoch {epoch}: the last {config.clean_final_epochs} "
                      "epoch(s) train on the images as they are.")

        started = time.perf_counter()
        batch_callback = _BatchHooksCallback(hooks, epoch, pipeline.steps_per_epoch)
        fit_history = model.fit(
            pipeline.dataset(epoch, augment=augmented),
            epochs=1,
            verbose=0,
            shuffle=False,  # the pipeline already orders each epoch, reproducibly
            callbacks=[batch_callback],
        )
        if batch_callback.cancelled:
            cancelled = True
            break
        val_probs = predict_proba(model, val_images, batch_size=config.batch_size,
                                  on_batch=hooks.alive)
        entry = {
            "epoch": epoch,
            "loss": _finite_or_none(fit_history.history["loss"][-1]),
            "accuracy": _finite_or_none(fit_history.history["accuracy"][-1]),
            **_validation_scores(val_labels, val_probs, data.num_classes),
            "lr": float(learning_rate),
            "seconds": round(time.perf_counter() - started, 3),
            "augmented": augmented,
        }
        state.history.append(entry)
        state.epochs_completed = epoch
        value = entry[config.monitor]
        # A two-phase run keeps a phase-2 epoch: its first one replaces phase 1's best.
        if state.best_epoch < config.best_epoch_from or _is_improvement(
                value, state.best_metric, config.monitor_mode):
            improved = True
            state.best_epoch, state.best_metric = epoch, value
            best_val_probs = val_probs
        else:
            improved = False
        patience = config.early_stopping_patience
        # Patience counts from the best epoch, or from the start of the last stage if later.
        since = max(state.best_epoch, config.early_stopping_from - 1)
        if patience is not None and epoch < total and epoch - since >= patience:
            state.stopped_early = True
        checkpoints.commit(model, {**state_header, **state.to_json()}, save_best=improved)
        hooks.on_epoch_end(epoch=epoch, total_epochs=total, metrics=dict(entry))
        if state.stopped_early:
            hooks.log(
                f"Early stopping after epoch {epoch}: {config.monitor} has not improved for "
                f"{patience} epoch(s) since epoch {since}."
            )

    result = TrainResult(
        model_path=checkpoints.best_path if checkpoints.best_path.exists() else None,
        history=list(state.history),
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        monitor=config.monitor,
        epochs_completed=state.epochs_completed,
        cancelled=cancelled,
        stopped_early=state.stopped_early,
        val_metrics={},
        test_metrics=None,
        num_params=count_parameters(model),
        train_seconds=round(sum(entry["seconds"] for entry in state.history), 3),
        device=runtime.device,
        class_weight=class_weight,
        resumed_from_epoch=resumed_from,
    )
    if cancelled:
        hooks.log(f"Training cancelled after {state.epochs_completed} completed epoch(s).")
        return result

    if state.history and all(entry["val_loss"] is None for entry in state.history):
        raise TrainingDivergedError(
            f"training diverged: the model's validation outputs were NaN or infinite after each "
            f"of the {state.epochs_completed} epoch(s), so there is no model to keep; try a "
            f"lower learning rate (it was {config.learning_rate:g})")
    hooks.log(f"Evaluating the best model (epoch {state.best_epoch}).")
    if state.best_epoch == state.epochs_completed > resumed_from:
        # The model in memory is the best checkpoint, and its validation predictions were made
        # at the end of that epoch: neither needs to be made again.
        best_model = model
    else:
        with runtime.distribution_strategy.scope():
            best_model = keras.models.load_model(checkpoints.best_path)
        best_val_probs = None
    if best_val_probs is not None and not config.tta:
        result.val_metrics = classification_metrics(val_labels, best_val_probs, data.class_names)
    else:
        result.val_metrics = _evaluate(best_model, data, "val", config, hooks)
    if evaluate_test:
        result.test_metrics = _test_metrics(best_model, data, config, hooks)
    return result


# --------------------------------------------------------------------------------------------
# Ensembles


def _ensemble_entry(entry: dict, *, member: int, offset: int) -> dict:
    """Member ``member``'s (0-based) history entry as the ensemble's: its epoch counted after
    the ``offset`` epochs of the members before it, and the member named (1-based)."""
    return {**entry, "epoch": offset + entry["epoch"], "member": member + 1}


class _MemberHooks(TrainingHooks):
    """One member's progress, reported to the job as part of the whole ensemble's epochs.

    Member ``i`` (0-based) owns the epochs ``i * epochs + 1`` to ``(i + 1) * epochs``; its
    history entries carry ``member`` (1-based), and its log lines say which member speaks.
    """

    def __init__(self, outer: TrainingHooks, *, member: int, size: int, epochs: int,
                 first: bool):
        self.outer, self.member, self.size = outer, member, size
        self.offset, self.total = member * epochs, size * epochs
        self._first = first  # the first member this call trains: the job hears one start

    def on_train_begin(self, *, total_epochs: int, resumed_from_epoch: int, device: str) -> None:
        if self._first:
            self.outer.on_train_begin(total_epochs=self.total,
                                      resumed_from_epoch=self.offset + resumed_from_epoch,
                                      device=device)

    def on_epoch_end(self, *, epoch: int, total_epochs: int, metrics: dict) -> None:
        self.outer.on_epoch_end(epoch=self.offset + epoch, total_epochs=self.total,
                                metrics=_ensemble_entry(metrics, member=self.member,
                                                        offset=self.offset))

    def on_batch_end(self, *, epoch: int, batch: int, total_batches: int) -> None:
        self.outer.on_batch_end(epoch=self.offset + epoch, batch=batch, total_batches=total_batches)

    def should_stop(self) -> bool:
        return self.outer.should_stop()

    def alive(self) -> None:
        self.outer.alive()

    def log(self, message: str) -> None:
        self.outer.log(f"Member {self.member + 1}/{self.size}: {message}")


def _train_ensemble(*, config: TrainConfig, data: DatasetArrays, workdir: Path,
                    hooks: TrainingHooks, weights_dir: Path | None,
                    evaluate_test: bool) -> TrainResult:
    """``ensemble_size`` members trained one after the other, each in ``workdir/member-<i>``
    with its own checkpoints (a resumed job skips finished members and resumes the current one
    at its last epoch), then averaged into ``workdir/ensemble.keras`` and evaluated as one."""
    from medml.ensemble import build_ensemble

    size, epochs = config.ensemble_size, config.epochs
    hooks.log(f"Ensemble of {size} {config.architecture} models, seeds {config.seed} to "
              f"{config.seed + size - 1}; each keeps its best epoch by {config.monitor}.")
    fingerprint = dataset_fingerprint(data)
    results: list[TrainResult] = []
    began_at = None  # the job's epoch this call starts after
    for member in range(size):
        member_config = TrainConfig.from_dict(
            {**config.to_dict(), "ensemble_size": 1, "seed": config.seed + member, "tta": False}
        )
        member_dir = workdir / f"member-{member}"
        result = _finished_member(member_dir, member_config, fingerprint)
        if result is not None:
            hooks.log(f"Member {member + 1}/{size} finished in an earlier run.")
            results.append(result)
            continue
        member_hooks = _MemberHooks(hooks, member=member, size=size, epochs=epochs,
                                    first=began_at is None)
        result = train(config=member_config, data=data, workdir=member_dir, hooks=member_hooks,
                       weights_dir=weights_dir, evaluate_test=False)
        if began_at is None:
            began_at = member * epochs + result.resumed_from_epoch
        results.append(result)
        if result.cancelled:
            break
        _write_json_atomic(member_dir / MEMBER_RESULT, _member_record(result, member_config,
                                                                      fingerprint))
    if began_at is None:  # every member had finished: only the averaging was left
        began_at = size * epochs
        hooks.on_train_begin(total_epochs=size * epochs, resumed_from_epoch=began_at, device="")

    offset_history = [_ensemble_entry(entry, member=i, offset=i * epochs)
                      for i, result in enumerate(results) for entry in result.history]
    last = results[-1]
    members = [
        {"seed": config.seed + i, "best_epoch": r.best_epoch, "best_metric": r.best_metric,
         "epochs_completed": r.epochs_completed, "stopped_early": r.stopped_early,
         "val_accuracy": r.val_metrics.get("accuracy")}
        for i, r in enumerate(results)
    ]
    result = TrainResult(
        model_path=None, history=offset_history, best_epoch=0, best_metric=None,
        monitor=config.monitor, epochs_completed=(len(results) - 1) * epochs + last.epochs_completed,
        cancelled=last.cancelled, stopped_early=any(r.stopped_early for r in results),
        val_metrics={}, test_metrics=None, num_params=0,
        train_seconds=round(sum(r.train_seconds for r in results), 3), device=last.device,
        class_weight=last.class_weight, members=members,
        resumed_from_epoch=began_at,
    )
    if result.cancelled:
        hooks.log(f"Ensemble cancelled during member {len(results)} of {size}.")
        return result

    path = workdir / ENSEMBLE_FILE
    built = path.exists() and path.stat().st_mtime >= max(r.model_path.stat().st_mtime
                                                          for r in results)
    if built:  # by a run that died after averaging: the same file, so the same sha256
        ensemble = keras.models.load_model(path, compile=False)
    else:
        ensemble = build_ensemble(
            [keras.models.load_model(r.model_path, compile=False) for r in results],
            name=f"{config.architecture}_ensemble_of_{size}",
        )
        partial = workdir / "ensemble.partial.keras"
        ensemble.save(partial)
        _fsync_file(partial)
        os.replace(partial, path)
    hooks.log(f"Evaluating the ensemble of {size} members.")
    result.model_path = path
    result.num_params = count_parameters(ensemble)
    result.val_metrics = _evaluate(ensemble, data, "val", config, hooks)
    result.best_metric = _ensemble_monitor_value(result.val_metrics, config.monitor)
    if evaluate_test:
        result.test_metrics = _test_metrics(ensemble, data, config, hooks)
    return result


def _member_record(result: TrainResult, config: TrainConfig, fingerprint: str) -> dict:
    return {"config": config.to_dict(), "data_fingerprint": fingerprint,
            "model_file": result.model_path.name, "history": result.history,
            "best_epoch": result.best_epoch, "best_metric": result.best_metric,
            "epochs_completed": result.epochs_completed, "stopped_early": result.stopped_early,
            "val_metrics": result.val_metrics, "num_params": result.num_params,
            "train_seconds": result.train_seconds, "device": result.device,
            "class_weight": _json_class_weight(result.class_weight)}


def _finished_member(member_dir: Path, config: TrainConfig, fingerprint: str) -> TrainResult | None:
    """The result of a member that finished in an earlier run of the same job, else ``None``."""
    try:
        saved = json.loads((member_dir / MEMBER_RESULT).read_text())
    except (OSError, ValueError):
        return None
    model_path = member_dir / str(saved.get("model_file"))
    if (saved.get("config") != config.to_dict() or saved.get("data_fingerprint") != fingerprint
            or not model_path.exists()):
        return None
    weights = saved["class_weight"]
    return TrainResult(
        model_path=model_path, history=saved["history"], best_epoch=saved["best_epoch"],
        best_metric=saved["best_metric"], monitor=config.monitor,
        epochs_completed=saved["epochs_completed"], cancelled=False,
        stopped_early=saved["stopped_early"], val_metrics=saved["val_metrics"], test_metrics=None,
        num_params=saved["num_params"], train_seconds=saved["train_seconds"],
        device=saved["device"],
        class_weight=None if weights is None else {int(k): v for k, v in weights.items()},
        resumed_from_epoch=saved["epochs_completed"],
    )


def _ensemble_monitor_value(val_metrics: dict, monitor: str) -> float | None:
    key = {"val_accuracy": "accuracy", "val_auc": "roc_auc", "val_loss": "log_loss"}[monitor]
    value = val_metrics.get(key)
    return None if value is None else _finite_or_none(value)


def learning_rate_for_epoch(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based).

    Warm-up ramps linearly over ``warmup_epochs`` epochs (``lr * e / (warmup_epochs + 1)``),
    then ``schedule`` runs: ``"constant"``; ``"step"`` (x0.1 once half of all epochs are done,
    x0.01 once three quarters are: with 100 epochs, epochs 51-75 and 76-100, as in MedMNIST v2;
    a single epoch trains at ``lr``); ``"cosine"`` (from ``lr`` after warm-up down towards 0 at
    the end). After a pretrained backbone is unfrozen, everything is divided by 10.
    """
    base = config.learning_rate
    if config.backbone_freeze_epochs and epoch > config.backbone_freeze_epochs:
        base *= FINE_TUNE_LR_FACTOR
    warmup = config.warmup_epochs
    if epoch <= warmup:
        return base * epoch / (warmup + 1)
    if config.schedule == "step":
        done = epoch - 1  # epochs completed before this one
        passed = sum(done >= fraction * config.epochs for fraction in STEP_MILESTONES)
        return base * STEP_FACTOR**passed
    if config.schedule == "cosine":
        progress = (epoch - warmup - 1) / max(config.epochs - warmup, 1)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def dataset_fingerprint(data: DatasetArrays) -> str:
    """A hash of the class names and every split's images and labels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(list(data.class_names)).encode())
    for split in sorted(data.splits):
        images, labels = data.splits[split]
        digest.update(f"{split}:{images.shape}:{images.dtype}:{labels.shape}".encode())
        digest.update(np.ascontiguousarray(images))
        digest.update(np.ascontiguousarray(labels, dtype=np.int64))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Model


def _new_model(
    config: TrainConfig, data: DatasetArrays, pretrained_weights: Path | None
) -> keras.Model:
    model = build_model(
        config.architecture,
        input_shape=data.image_shape,
        num_classes=data.num_classes,
        pretrained_weights=pretrained_weights,
        dropout=config.dropout,
    )
    if config.uses_featurewise_normalization:
        model = add_featurewise_normalization(model, data.images("train"))
    return model


def _compile(model: keras.Model, config: TrainConfig, learning_rate: float) -> None:
    if config.label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=_optimizer(config, learning_rate), loss=loss, metrics=[accuracy]
    )


def _optimizer(config: TrainConfig, learning_rate: float) -> keras.optimizers.Optimizer:
    weight_decay = config.weight_decay or None
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=config.weight_decay
        )
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=config.momentum, weight_decay=weight_decay
        )
    return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay)


class _BatchHooksCallback(keras.callbacks.Callback):
    """Forwards batch progress to the hooks and stops the epoch when they ask to cancel."""

    def __init__(self, hooks: TrainingHooks, epoch: int, total_batches: int):
        super().__init__()
        self.hooks = hooks
        self.epoch = epoch
        self.total_batches = total_batches
        self.cancelled = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.hooks.on_batch_end(
            epoch=self.epoch, batch=batch + 1, total_batches=self.total_batches
        )
        if self.hooks.should_stop():
            self.cancelled = True
            self.model.stop_training = True


# --------------------------------------------------------------------------------------------
# Data


class _TrainPipeline:
    """Builds each epoch's ``tf.data`` pipeline of training batches."""

    def __init__(
        self, data: DatasetArrays, config: TrainConfig, class_weight: dict[int, float] | None
    ):
        labels = data.labels("train").astype(np.int64)
        self._images = tf.constant(data.images("train"))
        self._labels = tf.constant(labels)
        self._count = len(labels)
        self._num_classes = data.num_classes
        self._batch_size = config.batch_size
        self._seed = config.seed
        self._one_hot = config.label_smoothing > 0
        self._augmenter = build_augmenter(config.augmentation, config.seed)
        self._sample_weights = None
        if class_weight is not None:
            table = [class_weight.get(index, 1.0) for index in range(data.num_classes)]
            self._sample_weights = tf.constant(table, dtype=tf.float32)
        self._sampling_probs = None
        if config.imbalance == "balanced_sampling":
            counts = np.bincount(labels, minlength=data.num_classes)
            present = int(np.count_nonzero(counts))
            self._sampling_probs = 1.0 / (present * counts[labels])
        self.steps_per_epoch = math.ceil(self._count / self._batch_size)

    def dataset(self, epoch: int, *, augment: bool) -> tf.data.Dataset:
        rng = np.random.default_rng([self._seed, epoch])
        if self._sampling_probs is not None:
            order = rng.choice(self._count, size=self._count, replace=True, p=self._sampling_probs)
        else:
            order = rng.permutation(self._count)
        augment_seed = tf.constant(int(rng.integers(2**62)), dtype=tf.int64)
        augmenter = self._augmenter if augment else None
        images, labels = self._images, self._labels
        sample_weights, one_hot, num_classes = self._sample_weights, self._one_hot, self._num_classes

        def make_batch(batch_index: tf.Tensor, indices: tf.Tensor):
            x = tf.gather(images, indices)
            y = tf.gather(labels, indices)
            if augmenter is not None:
                x = augmenter(x, seed=tf.stack([augment_seed, batch_index]))
            target = tf.one_hot(y, num_classes) if one_hot else y
            if sample_weights is not None:
                return x, target, tf.gather(sample_weights, y)
            return x, target

        dataset = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
        dataset = dataset.batch(self._batch_size).enumerate()
        dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.prefetch(tf.data.AUTOTUNE)


def _class_weights(data: DatasetArrays) -> dict[int, float]:
    """scikit-learn's "balanced" weights, ``n / (k * count)``; 1.0 for classes with no image."""
    labels = data.labels("train")
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    by_class = {int(c): float(w) for c, w in zip(present, weights, strict=True)}
    return {index: by_class.get(index, 1.0) for index in range(data.num_classes)}


def _json_class_weight(class_weight: dict[int, float] | None) -> dict[str, float] | None:
    return None if class_weight is None else {str(k): v for k, v in class_weight.items()}


def _check_data(data: DatasetArrays, config: TrainConfig) -> None:
    for split in ("train", "val"):
        if split not in data.splits or len(data.labels(split)) == 0:
            raise ValueError(f"Training needs a non-empty {split!r} split.")
    shape = data.image_shape
    for split, (images, labels) in data.splits.items():
        if images.dtype != np.uint8:
            raise ValueError(f"Split {split!r} has {images.dtype} images, expected uint8.")
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(
                f"Split {split!r} has images of shape {images.shape[1:]}, expected {shape}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"Split {split!r} has {len(images)} images but {len(labels)} labels."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= data.num_classes):
            raise ValueError(
                f"Split {split!r} has labels outside [0, {data.num_classes - 1}]."
            )
    if data.num_classes < 2:
        raise ValueError(f"Training needs at least 2 classes; the dataset has {data.num_classes}.")
    height, width, channels = shape
    min_size = ARCHITECTURES[config.architecture].min_size
    if channels not in (1, 3):
        raise ValueError(
            f"The dataset's images have {channels} channels; models take grayscale (1) or RGB "
            "(3) images."
        )
    if height < min_size or width < min_size:
        raise ValueError(
            f"The dataset's images are {height}x{width}; {config.architecture} needs at least "
            f"{min_size}x{min_size}: import the dataset again with a larger image size."
        )
    if config.monitor == "val_auc":
        absent = sorted(set(range(data.num_classes)) - set(data.labels("val").tolist()))
        if absent:
            raise ValueError(
                f"monitor='val_auc' needs every class in the validation split; "
                f"class(es) {absent} have no validation image. Monitor val_loss or "
                "val_accuracy instead."
            )


# --------------------------------------------------------------------------------------------
# Metrics


def _validation_scores(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict:
    if not np.all(np.isfinite(probs)):
        logger.warning("Validation probabilities contain NaN or infinity; scores left empty.")
        return {"val_loss": None, "val_accuracy": None, "val_auc": None}
    probs = probs.astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "val_loss": float(log_loss(labels, probs, labels=list(range(num_classes)))),
        "val_accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
        "val_auc": roc_auc(labels, probs)[0],
    }


def _is_improvement(value: float | None, best: float | None, mode: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _evaluate(model: keras.Model, data: DatasetArrays, split: str, config: TrainConfig,
              hooks: TrainingHooks) -> dict:
    probs = predict_proba(model, data.images(split), batch_size=config.batch_size, tta=config.tta,
                          on_batch=hooks.alive)
    return classification_metrics(data.labels(split), probs, data.class_names)


def _test_metrics(model: keras.Model, data: DatasetArrays, config: TrainConfig,
                  hooks: TrainingHooks) -> dict | None:
    """The test split's metrics, evaluated once at the end; ``None`` without test images."""
    if "test" in data.splits and len(data.labels("test")):
        return _evaluate(model, data, "test", config, hooks)
    hooks.log("No test images: test metrics skipped.")
    return None


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class _RunState:
    epochs_completed: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    backbone_frozen: bool = False
    stopped_early: bool = False

    def to_json(self) -> dict:
        return {
            "epochs_completed": self.epochs_completed,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "backbone_frozen": self.backbone_frozen,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_json(cls, data: dict) -> _RunState:
        return cls(
            epochs_completed=int(data["epochs_completed"]),
            history=list(data["history"]),
            best_epoch=int(data["best_epoch"]),
            best_metric=data["best_metric"],
            backbone_frozen=bool(data["backbone_frozen"]),
            stopped_early=bool(data["stopped_early"]),
        )


class _Checkpoints:
    """The checkpoint files of one working directory and their atomic update."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.last_path = workdir / LAST_CHECKPOINT
        self.best_path = workdir / BEST_CHECKPOINT
        self.state_path = workdir / STATE_FILE

    def load_resumable_state(
        self, config: TrainConfig, fingerprint: str, log: Callable[[str], None]
    ) -> _RunState | None:
        """The saved state if training can resume from it, else ``None`` (with a log line)."""
        saved = self._recover()
        if saved is None:
            if self.last_path.exists():
                log(f"{STATE_FILE} missing or unreadable in {self.workdir}; starting over.")
            return None
        reason = None
        if saved.get("format") != STATE_FORMAT:
            reason = "it was written by another version"
        elif _training_fields(saved.get("config", {})) != _training_fields(config.to_dict()):
            reason = "its configuration differs"
        elif saved.get("data_fingerprint") != fingerprint:
            reason = "its data differ"
        elif not (self.last_path.exists() and self.best_path.exists()):
            reason = "checkpoint files are missing"
        if reason is None:
            try:
                state = _RunState.from_json(saved)
            except (KeyError, TypeError, ValueError):
                reason = "its state file is incomplete"
            else:
                if state.epochs_completed >= 1:
                    return state
                reason = "no epoch was completed"
        log(f"Not resuming from the checkpoint in {self.workdir}: {reason}. Starting over.")
        return None

    def commit(self, model: keras.Model, state: dict, *, save_best: bool) -> None:
        """Save the model after an epoch and record ``state``, atomically (see module doc)."""
        epoch = int(state["epochs_completed"])
        pending = {LAST_CHECKPOINT: f"{_PENDING_PREFIX}e{epoch:04d}-last.keras"}
        if save_best:
            pending[BEST_CHECKPOINT] = f"{_PENDING_PREFIX}e{epoch:04d}-best.keras"
        last_tmp = self.workdir / pending[LAST_CHECKPOINT]
        last_tmp.unlink(missing_ok=True)
        model.save(last_tmp)
        _fsync_file(last_tmp)
        if save_best:
            _link_or_copy(last_tmp, self.workdir / pending[BEST_CHECKPOINT])
        state = {**state, "pending": pending, "updated_at": datetime.now(UTC).isoformat()}
        _write_json_atomic(self.state_path, state)
        self._apply_pending(pending)

    def clear(self) -> None:
        """Remove every checkpoint file (before a fresh start)."""
        for path in (self.state_path, self.last_path, self.best_path):
            path.unlink(missing_ok=True)
        for path in self.workdir.glob(f"{_PENDING_PREFIX}*"):
            path.unlink(missing_ok=True)

    def _recover(self) -> dict | None:
        """Read ``state.json``, finish its epoch's renames, delete uncommitted files."""
        try:
            saved = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            saved = None
        pending = (saved or {}).get("pending")
        if isinstance(pending, dict):
            self._apply_pending(pending)
        for stray in self.workdir.glob(f"{_PENDING_PREFIX}*"):
            stray.unlink(missing_ok=True)
        return saved

    def _apply_pending(self, pending: dict[str, str]) -> None:
        for target, name in pending.items():
            if target not in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                continue
            source = self.workdir / name
            if source.exists():
                os.replace(source, self.workdir / target)
        _fsync_directory(self.workdir)


def _training_fields(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _EVALUATION_ONLY_FIELDS}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{_PENDING_PREFIX}{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, allow_nan=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _link_or_copy(source: Path, target: Path) -> None:
    # Checkpoint files are never modified after they are written, so a hard link is a safe,
    # instant copy; filesystems without hard links get a real copy.
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        _fsync_file(target)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on some platforms
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
