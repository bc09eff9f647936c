"""The launch form: a preset plus any fields the user fills in (blank keeps the preset's value)."""

from __future__ import annotations

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

    def config_overrides(self) -> dict:
        """The fields the user filled in, shaped as a training config."""
        data = self.cleaned_data
        overrides = {}
        for key in ["architecture", "epochs", "batch_size", "optimizer", "learning_rate",
                    "schedule", "weight_decay", "label_smoothing", "imbalance",
                    "early_stopping_patience", "seed", "ensemble_size", "phase1_epochs",
                    "clean_final_epochs"]:
            if data.get(key) not in (None, ""):
                overrides[key] = data[key]
        if data.get("two_phase"):
            overrides["two_phase"] = data["two_phase"] == "1"
        augmentation = {}
        if data.get("augmentation_enabled"):
            augmentation["enabled"] = data["augmentation_enabled"] == "1"
        for key in AUG_FLAGS:
            if data.get(key):
                augmentation[key] = data[key] == "1"
        for key in AUG_RANGES:
            if data.get(key) is not None:
                augmentation[key] = data[key]
        if augmentation:
            overrides["augmentation"] = augmentation
        return overrides
