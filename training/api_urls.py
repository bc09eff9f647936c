from django.urls import path
from rest_framework.routers import SimpleRouter

from training.api import views

router = SimpleRouter()
router.register("training-jobs", views.TrainingJobViewSet, basename="trainingjob")

urlpatterns = [
    path("architectures/", views.architectures, name="api-architectures"),
    path("presets/", views.presets, name="api-presets"),
    *router.urls,
]
