from django.urls import path
from rest_framework.routers import SimpleRouter

from training.api import inference, views

router = SimpleRouter()
router.register("training-jobs", views.TrainingJobViewSet, basename="trainingjob")
router.register("inference-jobs", inference.InferenceJobViewSet, basename="inferencejob")

urlpatterns = [
    path("architectures/", views.architectures, name="api-architectures"),
    path("presets/", views.presets, name="api-presets"),
    *router.urls,
]
