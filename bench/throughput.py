"""Training and inference throughput (images/s) of every architecture on this machine."""

from __future__ import annotations

import time

import numpy as np


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing and first allocations
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def run(*, seeds=None, quick: bool = False) -> dict:
    import keras
    import tensorflow as tf

    from medml.architectures import build_model, count_parameters, list_architectures
    from medml.runtime import configure_runtime

    device = configure_runtime().device
    batch = 128
    rng = np.random.default_rng(0)
    rows = []
    for spec in list_architectures():
        for shape, classes in (((28, 28, 3), 8), ((28, 28, 1), 2)):
            if quick and shape[2] == 1:
                continue
            model = build_model(spec.name, input_shape=shape, num_classes=classes)
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss="sparse_categorical_crossentropy")
            x = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
            y = rng.integers(0, classes, size=(batch,))
            heavy = spec.name in ("resnet50", "vgg16", "resnet18_28")
            repeats = 2 if (quick or heavy) else 5
            train_step = _time(lambda m=model, x=x, y=y: m.train_on_batch(x, y), repeats)
            infer = tf.function(lambda t, m=model: m(t, training=False))
            x_tensor = tf.constant(x)
            infer_step = _time(lambda: infer(x_tensor).numpy(), repeats * 2)
            rows.append({
                "architecture": spec.name, "input": "x".join(map(str, shape)),
                "classes": classes, "params": count_parameters(model), "batch": batch,
                "train_images_per_s": round(batch / train_step, 1),
                "inference_images_per_s": round(batch / infer_step, 1),
            })
            print(f"   {spec.name:18s} {rows[-1]['input']:8s} train {rows[-1]['train_images_per_s']:9.1f}"
                  f" img/s  infer {rows[-1]['inference_images_per_s']:9.1f} img/s", flush=True)
            keras.backend.clear_session()
    return {"device": device, "rows": rows}
