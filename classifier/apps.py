from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def _forget_model_version(sender, instance, **kwargs):
    from classifier import selectors

    selectors.forget_serving_models(pks=[instance.pk])


def _forget_dataset_models(sender, instance, **kwargs):
    from classifier import selectors
    from classifier.models import ModelVersion

    pks = ModelVersion.objects.filter(dataset_id=instance.pk).values_list("pk", flat=True)
    selectors.forget_serving_models(pks=list(pks))


class ClassifierConfig(AppConfig):
    name = "classifier"
    verbose_name = "Catalog: datasets, models and predictions"

    def ready(self):
        from classifier.models import Dataset, ModelEvaluation, ModelVersion, Prediction
        from classifier.signals import delete_files_with_rows

        delete_files_with_rows(Dataset, "data_file")
        delete_files_with_rows(ModelVersion, "artifact")
        delete_files_with_rows(Prediction, "image")
        delete_files_with_rows(ModelEvaluation, "probabilities")

        # The cached rows of classification requests (``selectors.serving_models``).
        for name, signal in (("save", post_save), ("delete", post_delete)):
            signal.connect(_forget_model_version, sender=ModelVersion,
                           dispatch_uid=f"serving-model-{name}")
            signal.connect(_forget_dataset_models, sender=Dataset,
                           dispatch_uid=f"serving-model-dataset-{name}")
