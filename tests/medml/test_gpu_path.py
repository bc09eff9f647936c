"""The multi-GPU, mixed-precision training path, as far as a machine without a GPU can run it.

On a node with several GPUs, ``medml.runtime.configure_runtime`` gives a ``MirroredStrategy`` and,
when asked, the ``mixed_float16`` policy. Here the CPU is split into two logical devices and the
runtime is replaced by one that mirrors over them with that policy, so the training loop,
checkpoints, resuming and serving run exactly as they would with two replicas in float16; only
the device discovery (GPU names, memory growth) is left out. TensorFlow must be configured before
it starts, so the run happens in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    from medml import fit, runtime
    from medml.config import TrainConfig
    from medml.infer import Predictor
    from tests.medml.test_fit import RecordingHooks, synthetic_data

    def two_replicas(*, mixed_precision=False):
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
        return runtime.RuntimeInfo(
            device="2x GPU: stand-in", gpus=["stand-in"] * 2, cpu_threads=1,
            mixed_precision=mixed_precision,
            distribution_strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))

    replicas = []
    new_model = fit._new_model

    def recording_new_model(*args, **kwargs):
        replicas.append(tf.distribute.get_strategy().num_replicas_in_sync)
        return new_model(*args, **kwargs)

    fit.configure_runtime = two_replicas
    fit._new_model = recording_new_model

    workdir = sys.argv[1]
    data = synthetic_data()
    config = TrainConfig.from_dict({
        "architecture": "compact_cnn", "epochs": 3, "batch_size": 16, "learning_rate": 3e-3,
        "schedule": "constant", "mixed_precision": True, "imbalance": "class_weight",
        "augmentation": {"enabled": True, "horizontal_flip": True}})
    first = fit.train(config=config, data=data, workdir=workdir,
                      hooks=RecordingHooks(stop_after=(2, 1)))
    hooks = RecordingHooks()
    second = fit.train(config=config, data=data, workdir=workdir, hooks=hooks)

    # Served as the platform serves: loaded in a process whose policy is float32.
    keras.mixed_precision.set_global_policy("float32")
    predictor = Predictor.from_file(second.model_path)
    images = data.images("test")
    served = predictor.predict(images)
    keras_probs = predictor.model(images, training=False)
    print(json.dumps({
        "replicas": replicas,
        "first": {"cancelled": first.cancelled, "epochs": first.epochs_completed},
        "second": {"resumed_from": second.resumed_from_epoch, "epochs": second.epochs_completed,
                   "device": second.device, "val_accuracy": second.val_metrics["accuracy"],
                   "test_accuracy": second.test_metrics["accuracy"]},
        "log": hooks.messages,
        "layer_policies": sorted({layer.dtype_policy.name for layer in predictor.model.layers
                                  if layer.weights}),
        "output_dtype": str(predictor.model.outputs[0].dtype),
        "runtime": predictor.runtime,
        "served_vs_keras": float(np.max(np.abs(served - np.asarray(keras_probs, np.float32)))),
        "rows_sum_to_one": bool(np.allclose(served.sum(axis=1), 1.0, atol=1e-3)),
    }))
    """
)


@pytest.mark.slow
def test_two_replicas_in_mixed_precision_train_resume_and_serve(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "run")], cwd=ROOT, capture_output=True,
        text=True, timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])

    assert out["replicas"] == [2]  # the model was built under the two-replica strategy
    assert out["first"] == {"cancelled": True, "epochs": 1}
    second = out["second"]
    assert (second["resumed_from"], second["epochs"]) == (1, 3)
    assert second["device"] == "2x GPU: stand-in"
    assert any("Resuming from epoch 2 of 3" in line for line in out["log"])
    assert 0.0 <= second["val_accuracy"] <= 1.0 and 0.0 <= second["test_accuracy"] <= 1.0

    # Trained in float16 with float32 outputs; served through ONNX Runtime like any model.
    assert "mixed_float16" in out["layer_policies"]
    assert out["output_dtype"] == "float32"
    assert out["runtime"] == "onnxruntime"
    assert out["served_vs_keras"] <= 1e-4 and out["rows_sum_to_one"]
