"""Where computations run: device discovery, CPU threads, GPU memory, mixed precision.

:func:`configure_runtime` is called once at the start of a training run. It only changes settings
TensorFlow still accepts: threading and GPU memory growth can only be set before TensorFlow
initialises its runtime, so in a process that already ran a model they keep their values (and
the returned :class:`RuntimeInfo` says so in ``notes``).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


@dataclass
class RuntimeInfo:
    """What :func:`configure_runtime` found and set.

    Attributes:
        device: Human-readable description, e.g. ``"GPU: NVIDIA H100 80GB HBM3"`` or
            ``"CPU (2 threads)"``.
        gpus: Names of the visible GPUs (empty on a CPU).
        cpu_threads: CPU cores available to this process.
        mixed_precision: Whether the ``mixed_float16`` policy is active.
        distribution_strategy: ``tf.distribute.MirroredStrategy`` with several GPUs, otherwise
            the default strategy. Build and compile models inside its ``scope()``.
        notes: Messages worth logging (e.g. a setting that could not be applied).
    """

    device: str
    gpus: list[str]
    cpu_threads: int
    mixed_precision: bool
    distribution_strategy: tf.distribute.Strategy = field(repr=False)
    notes: list[str] = field(default_factory=list)


def configure_runtime(*, mixed_precision: bool = False) -> RuntimeInfo:
    """Discover the devices and configure TensorFlow for them.

    * GPUs: memory growth is enabled, so one process does not reserve the whole card; more
      than one GPU gives a ``MirroredStrategy``.
    * CPU only: TensorFlow's thread pools are sized to the cores this process may use
      (``os.sched_getaffinity``, which respects container and ``taskset`` limits, unlike
      ``os.cpu_count``).
    * Mixed precision: the global Keras policy is set to ``mixed_float16`` on a GPU when asked,
      and to ``float32`` otherwise (on a CPU float16 is slower, so the request is ignored with a
      note).

    Args:
        mixed_precision: Ask for float16 computation.

    Returns:
        A :class:`RuntimeInfo`.
    """
    notes: list[str] = []
    cpu_threads = available_cpu_count()
    gpus = tf.config.list_physical_devices("GPU")
    gpu_names = [_gpu_name(gpu) for gpu in gpus]

    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                notes.append("GPU memory growth left unchanged: TensorFlow is already running.")
                break
    else:
        _configure_cpu_threads(cpu_threads, notes)

    use_mixed = bool(mixed_precision and gpus)
    if mixed_precision and not gpus:
        notes.append("Mixed precision requested but no GPU is available: computing in float32.")
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")

    if len(gpus) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    if gpus:
        device = f"{len(gpus)}x GPU: " if len(gpus) > 1 else "GPU: "
        device += ", ".join(gpu_names)
    else:
        device = f"CPU ({cpu_threads} threads)"
    for note in notes:
        logger.info(note)
    return RuntimeInfo(
        device=device,
        gpus=gpu_names,
        cpu_threads=cpu_threads,
        mixed_precision=use_mixed,
        distribution_strategy=strategy,
        notes=notes,
    )


def available_cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not available on macOS / Windows
        return max(1, os.cpu_count() or 1)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a trained model depends on, for provenance records."""
    import PIL
    import sklearn

    import medml

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "sklearn": sklearn.__version__,
        "pillow": PIL.__version__,
        "medml": medml.__version__,
    }


def _configure_cpu_threads(cpu_threads: int, notes: list[str]) -> None:
    # Values already set (by TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS or an earlier call)
    # are respected.
    threading = tf.config.threading
    # One thread per core in both pools, as TensorFlow would choose if it counted the cores this
    # process may use (it counts the machine's, too many in a container). With a single
    # inter-op thread, the independent small ops of a training step run one after another.
    wanted = {"intra": cpu_threads, "inter": cpu_threads}
    try:
        if threading.get_intra_op_parallelism_threads() == 0:
            threading.set_intra_op_parallelism_threads(wanted["intra"])
        if threading.get_inter_op_parallelism_threads() == 0:
            threading.set_inter_op_parallelism_threads(wanted["inter"])
    except RuntimeError:
        notes.append("CPU thread pools left unchanged: TensorFlow is already running.")


def _gpu_name(gpu: tf.config.PhysicalDevice) -> str:
    try:
        details = tf.config.experimental.get_device_details(gpu)
    except (RuntimeError, ValueError):
        details = {}
    return str(details.get("device_name") or gpu.name)
