"""The launch form: a preset plus any fields the user fills in (blank keeps the preset's value)."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from classifier.models import Dataset

OPTIMIZERS = [("", "(preset)"), ("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD")]
SCHEDULES = [("", "(preset)"), ("constant", "Constant"), ("step", "Step (MedMNIST v2)"),
             ("cosine", "Cosine")]
IMBALANCE = [("", "(preset)"), ("none", "None"), ("class_weight", "Class weights"),
             ("balanced_sampling", "Balanced sampling")]
TRISTATE = [("", "(preset)"), ("1", "Yes"), ("0", "No")]
AUG_FLAGS = ["horizontal_flip", "vertical_flip", "rotate90", "featurewise_normalization"]
AUG_RANGES = ["rotation_range", "width_shift_range", "height_shift_range", "zoom_range"]
# Form field -> the training config setting it overrides ("augmentation.x": a nested setting).
CONFIG_FIELDS: dict[str, str] = {
    **{key: key for key in [
        "architecture", "epochs", "batch_size", "optimizer", "learning_rate", "schedule",
        "weight_decay", "label_smoothing", "imbalance", "early_stopping_patience", "seed",
        "ensemble_size", "two_phase", "phase1_epochs", "clean_final_epochs"]},
    "augmentation_enabled": "augmentation.enabled",
    **{key: f"augmentation.{key}" for key in AUG_FLAGS + AUG_RANGES},
}
# How the effective-configuration summary names the settings that have no form field.
SETTING_LABELS = {
    "momentum": "Momentum (SGD)",
    "warmup_epochs": "Warm-up epochs",
    "monitor": "Best epoch by",
    "pretrained": "ImageNet weights",
    "freeze_backbone_epochs": "Frozen-backbone epochs",
    "dropout": "Dropout",
    "mixed_precision": "Mixed precision",
    "tta": "Test-time augmentation",
}


class TrainingLaunchForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none())
    preset = forms.ChoiceField(required=False)
    architecture = forms.ChoiceField(required=False)
    name = forms.CharField(required=False, max_length=120)
    epochs = forms.IntegerField(required=False, min_value=1, max_value=1000)
    batch_size = forms.IntegerField(required=False, min_value=1, max_value=4096)
    optimizer = forms.ChoiceField(required=False, choices=OPTIMIZERS)
    learning_rate = forms.FloatField(required=False, min_value=0)
    schedule = forms.ChoiceField(required=False, choices=SCHEDULES)
    weight_decay = forms.FloatField(required=False, min_value=0)
    label_smoothing = forms.FloatField(required=False, min_value=0)
    imbalance = forms.ChoiceField(required=False, choices=IMBALANCE)
    early_stopping_patience = forms.IntegerField(required=False, min_value=1)
    seed = forms.IntegerField(required=False, min_value=0)
    ensemble_size = forms.IntegerField(
        required=False, min_value=1, max_value=10, label="Ensemble size",
        help_text="Train this many models (seeds seed, seed+1, ...) and serve their average.")
    augmentation_enabled = forms.ChoiceField(required=False, choices=TRISTATE,
                                             label="Augmentation")
    horizontal_flip = forms.ChoiceField(required=False, choices=TRISTATE)
    vertical_flip = forms.ChoiceField(required=False, choices=TRISTATE)
    rotate90 = forms.ChoiceField(required=False, choices=TRISTATE, label="90° rotations")
    featurewise_normalization = forms.ChoiceField(required=False, choices=TRISTATE)
    rotation_range = forms.FloatField(required=False, min_value=0, label="Rotation (degrees)")
    width_shift_range = forms.FloatField(required=False, min_value=0)
    height_shift_range = forms.FloatField(required=False, min_value=0)
    zoom_range = forms.FloatField(required=False, min_value=0)
    two_phase = forms.ChoiceField(required=False, choices=TRISTATE,
                                  help_text="Train without augmentation first, then with it.")
    phase1_epochs = forms.IntegerField(required=False, min_value=0)
    clean_final_epochs = forms.IntegerField(
        required=False, min_value=0, label="Final epochs without augmentation",
        help_text="The last epochs train on the images as they are.")

    def __init__(self, *args, user, **kwargs):
        from medml.architectures import list_architectures
        from medml.config import PRESETS

        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = Dataset.objects.visible_to(user)
        self.fields["preset"].choices = [("", "(none: defaults)")] + [
            (p.name, p.title) for p in PRESETS.values()
        ]
        self.fields["architecture"].choices = [("", "(preset)")] + [
            (a.name, a.title) for a in list_architectures()
        ]
        for name, key in CONFIG_FIELDS.items():
            self.fields[name].widget.attrs.update({
                "data-config-key": key, "data-config-kind": _kind_of(self.fields[name]),
            })
        self._preset_data = _preset_data()
        self.show_preset_values(self._chosen("preset"))

    def _chosen(self, name: str) -> str:
        """The value of field ``name`` the page shows selected: as submitted, else the initial."""
        if self.is_bound:
            return str(self.data.get(self.add_prefix(name)) or "")
        value = self.get_initial_for_field(self.fields[name], name)
        value = getattr(value, "pk", value)
        return "" if value is None else str(value)

    def show_preset_values(self, preset: str) -> None:
        """Show preset ``preset``'s value of each field (the defaults' for "" or an unknown name):
        as the placeholder of an input, in the "(preset)" option of a list."""
        config = self._preset_data.get(preset, self._preset_data[""])["config"]
        word = "preset" if preset in self._preset_data and preset else "default"
        for name, key in CONFIG_FIELDS.items():
            field = self.fields[name]
            text = display_value(_lookup(config, key), _choice_labels(field))
            if isinstance(field, forms.ChoiceField):
                field.choices = [("", f"({word}: {text})")] + [
                    choice for choice in field.choices if choice[0] != ""]
            else:
                field.widget.attrs["placeholder"] = text

    def dataset_note(self) -> str:
        """A note when the chosen preset was made for another dataset than the chosen one."""
        preset = self._preset_data.get(self._chosen("preset"))
        kind = self.dataset_kinds().get(self._chosen("dataset"))
        return _hint_note(preset["hint"] if preset else None, kind)

    def dataset_kinds(self) -> dict[str, str]:
        """Dataset id -> the MedMNIST dataset it is or looks like (when a preset is made for
        one), for the datasets the form offers."""
        if hasattr(self, "_dataset_kinds"):
            return self._dataset_kinds
        hints = {p["hint"] for p in self._preset_data.values() if p["hint"]}
        kinds = self._dataset_kinds = {}
        for dataset in self.fields["dataset"].queryset:
            kind = dataset_kind(dataset, hints)
            if kind:
                kinds[str(dataset.pk)] = kind
        return kinds

    def client_data(self) -> dict:
        """What the page's script needs to show preset values and the effective config: each
        preset's resolved config (as the server resolves it), every setting's label and the
        labels of its choices, and the kind of each dataset offered."""
        from medml.config import TrainConfig

        field_of = {key: name for name, key in CONFIG_FIELDS.items()}
        settings = []
        for key, _ in _flatten(TrainConfig().to_dict()):
            name = field_of.get(key)
            if name:
                settings.append({"key": key, "field": self[name].html_name,
                                 "label": str(self[name].label),
                                 "choices": _choice_labels(self.fields[name])})
            else:
                settings.append({"key": key, "field": None, "label": _setting_label(key),
                                 "choices": None})
        return {
            "presets": self._preset_data,
            "settings": settings,
            "datasets": self.dataset_kinds(),
            "note": NOTE_TEMPLATE,
        }

    def config_overrides(self) -> dict:
        """The fields the user filled in, shaped as a training config."""
        data = self.cleaned_data
        overrides: dict = {}
        for name, key in CONFIG_FIELDS.items():
            value = data.get(name)
            if value in (None, ""):
                continue
            if _kind_of(self.fields[name]) == "bool":
                value = value == "1"
            if key.startswith("augmentation."):
                overrides.setdefault("augmentation", {})[key.split(".", 1)[1]] = value
            else:
                overrides[key] = value
        return overrides


NOTE_TEMPLATE = ("This preset was made for {hint}, and the chosen dataset looks like {kind}: "
                 "it will train all the same, but check that this is the recipe you mean.")


def _hint_note(hint: str | None, kind: str | None) -> str:
    if not hint or not kind or hint == kind:
        return ""
    return NOTE_TEMPLATE.format(hint=hint, kind=kind)


def dataset_kind(dataset: Dataset, hints: set[str]) -> str | None:
    """The MedMNIST dataset ``dataset`` is (an official file) or looks like by its name (one of
    ``hints`` named in it: "Blood smears" looks like "bloodmnist"), else ``None``."""
    from medml.dataset_io import parse_medmnist_filename

    if dataset.source == Dataset.Source.MEDMNIST:
        parsed = parse_medmnist_filename(dataset.source_detail)
        if parsed:
            return parsed[0]
    text = f"{dataset.name} {dataset.slug} {dataset.source_detail}".lower()
    found = {hint for hint in hints if hint.lower().removesuffix("mnist") in text}
    return found.pop() if len(found) == 1 else None


def _preset_data() -> dict[str, dict]:
    """"" (no preset: the defaults) and each preset -> its title, dataset hint and resolved
    config, exactly as a job launched with it and no overrides would store it."""
    from medml.config import PRESETS, TrainConfig, resolve_preset

    data = {"": {"title": "(none: defaults)", "hint": None, "config": TrainConfig().to_dict()}}
    for preset in PRESETS.values():
        data[preset.name] = {"title": preset.title, "hint": preset.dataset_hint,
                             "config": resolve_preset(preset.name).to_dict()}
    return data


def _kind_of(field: forms.Field) -> str:
    if isinstance(field, forms.FloatField):  # before IntegerField: Django derives it from that
        return "float"
    if isinstance(field, forms.IntegerField):
        return "int"
    if isinstance(field, forms.ChoiceField) and (
            {str(value) for value, _ in field.choices if value != ""} == {"1", "0"}):
        return "bool"
    return "choice"


def _choice_labels(field: forms.Field) -> dict[str, str] | None:
    if not isinstance(field, forms.ChoiceField):
        return None
    return {str(value): str(label) for value, label in field.choices if value != ""}


def _flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _setting_label(key: str) -> str:
    if key in SETTING_LABELS:
        return SETTING_LABELS[key]
    words = key.split(".")[-1].replace("_", " ")
    return words[:1].upper() + words[1:]


def display_value(value, choices: dict[str, str] | None = None) -> str:
    """A setting's value as the page shows it; static/js/job_new.js's ``display`` is the same."""
    if choices is not None:
        code = ("1" if value else "0") if isinstance(value, bool) else str(value)
        if code in choices:
            return choices[code]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _js_number(value)
    return str(value)


def _js_number(value: float) -> str:
    """``String(value)`` in JavaScript: 90.0 is "90", 1e-05 is "0.00001", 1e-07 is "1e-7"."""
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(repr(value)), "f")
    mantissa, exponent = repr(value).split("e")
    return f"{mantissa}e{'-' if exponent.startswith('-') else '+'}{int(exponent.lstrip('+-'))}"
