"""Rows and small synthetic dataset files for tests.

Dataset files are generated, never read from disk: an ``.npz`` in the official MedMNIST key
layout, or a ``.zip`` of class-named folders of PNGs. Every helper is deterministic for a given
seed, so a test can rebuild the arrays it uploaded and compare them with what the platform stored.
"""

from __future__ import annotations

import io
import zipfile

import factory
import numpy as np
from django.conf import settings
from PIL import Image

from classifier import services
from classifier.models import Dataset, ModelVersion, Visibility
from medml.data import SPLITS

PASSWORD = "pw-12345!"

# Deliberately unbalanced and different per class, so a table that mixes up classes or splits
# shows the wrong numbers.
TINY_CLASS_COUNTS = {"train": [12, 10, 8], "val": [4, 3, 2], "test": [5, 3, 4]}
TINY_CLASS_NAMES = ["adenoma", "carcinoma", "normal"]


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = settings.AUTH_USER_MODEL
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.org")
    password = factory.django.Password(PASSWORD)

    class Params:
        staff = factory.Trait(is_staff=True)
        superuser = factory.Trait(is_staff=True, is_superuser=True)


# --- synthetic dataset files ---------------------------------------------------------------------


def medmnist_arrays(
    class_counts: dict[str, list[int]] | None = None,
    *,
    size: int = 28,
    channels: int | None = 3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The six official arrays: ``{split}_images`` (uint8) and ``{split}_labels`` (uint8, (N, 1)).

    ``class_counts`` gives, per split, the number of images of each class; labels are shuffled
    so classes are interleaved as in real files. ``channels=None`` or ``1`` gives ``(N, H, W)``
    grayscale images, as the official single-channel files have.
    """
    class_counts = class_counts or TINY_CLASS_COUNTS
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        counts = class_counts[split]
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)
        shape = (len(labels), size, size) + ((channels,) if channels and channels > 1 else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray] | None = None, **extra: np.ndarray) -> bytes:
    """An ``.npz`` file holding ``arrays`` (default: :func:`medmnist_arrays`) plus ``extra`` keys."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **(arrays if arrays is not None else medmnist_arrays()), **extra)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (16, 16), mode: str = "RGB", seed: int = 0) -> bytes:
    """A PNG of random pixels; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    """A zip holding ``members``; ``symlinks`` maps member names to link targets."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode bits below are read as such
            info.external_attr = (0o120777 << 16)  # S_IFLNK | rwxrwxrwx
            archive.writestr(info, target)
    return buffer.getvalue()


def class_folder_members(
    per_class: dict[str, int] | None = None, *, size: tuple[int, int] = (16, 16),
    mode: str = "RGB", prefix: str = "",
) -> dict[str, bytes]:
    """``<prefix><class>/img<NN>.png`` members with ``per_class[class]`` PNGs in each folder."""
    per_class = per_class or {"benign": 10, "malignant": 20}
    return {
        f"{prefix}{name}/img{index:02d}.png": png_bytes(size, mode, seed=1000 * c + index)
        for c, (name, count) in enumerate(per_class.items())
        for index in range(count)
    }


def class_folder_zip(per_class: dict[str, int] | None = None, **kwargs) -> bytes:
    """A zip of class-named folders of PNGs (see :func:`class_folder_members`)."""
    return zip_bytes(class_folder_members(per_class, **kwargs))


def default_class_names(count: int) -> list[str]:
    """``TINY_CLASS_NAMES`` cut to ``count``, or ``class 0`` ... for more classes than it has."""
    if count <= len(TINY_CLASS_NAMES):
        return TINY_CLASS_NAMES[:count]
    return [f"class {index}" for index in range(count)]


# --- rows ----------------------------------------------------------------------------------------


class DatasetFactory(factory.Factory):
    """A dataset imported through ``services.dataset_import`` from a tiny generated ``.npz``.

    ``DatasetFactory(owner=user)`` gives a private 3-class 28x28 RGB dataset with the counts of
    ``TINY_CLASS_COUNTS``; ``DatasetFactory(builtin=True)`` a public built-in with no owner.
    The arrays it uploaded are ``medmnist_arrays(class_counts, size=..., channels=..., seed=...)``.
    """

    class Meta:
        model = Dataset

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Tiny dataset {n}")
    filename = factory.Sequence(lambda n: f"tiny-{n}.npz")
    visibility = Visibility.PRIVATE
    class_counts = factory.LazyFunction(lambda: dict(TINY_CLASS_COUNTS))
    class_names = factory.LazyAttribute(lambda o: default_class_names(len(o.class_counts["train"])))
    size = 28
    channels = 3
    seed = 0
    builtin = False

    @classmethod
    def _build(cls, model_class, *args, **kwargs):
        raise NotImplementedError("a dataset needs its stored file: use DatasetFactory()")

    @classmethod
    def _create(cls, model_class, *, owner, name, filename, visibility, class_counts,
                class_names, size, channels, seed, builtin) -> Dataset:
        arrays = medmnist_arrays(class_counts, size=size, channels=channels, seed=seed)
        return services.dataset_import(
            source=io.BytesIO(npz_bytes(arrays)), filename=filename,
            owner=None if builtin else owner, name=name, visibility=visibility,
            class_names=class_names, builtin=builtin,
        )


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A registry row pointing at a placeholder artifact (no model is trained)."""

    class Meta:
        model = ModelVersion

    name = factory.Sequence(lambda n: f"model-{n}")
    version = 1
    architecture = "compact_cnn"
    dataset = factory.SubFactory(DatasetFactory)
    owner = factory.SelfAttribute("dataset.owner")
    artifact = factory.LazyAttribute(lambda mv: f"models/{mv.name}.keras")
    sha256 = "0" * 64
    metrics = factory.LazyFunction(lambda: {"accuracy": 0.5})


def save_tiny_trained_model(arrays: dict, path, *, num_classes: int = 3):
    """A small compact CNN trained for one epoch on ``arrays`` (28x28 RGB), saved as .keras."""
    import keras

    from medml.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=num_classes, width=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(arrays["train_images"], arrays["train_labels"].ravel(), epochs=1, batch_size=16,
              verbose=0)
    model.save(path)
    return path
