from django.urls import path

from classifier import views_registry

urlpatterns = [
    path("models/", views_registry.model_list, name="model-list"),
    path("models/compare/", views_registry.model_compare, name="model-compare"),
    path("models/<int:pk>/", views_registry.model_detail, name="model-detail"),
    path("models/<int:pk>/promote/", views_registry.model_promote, name="model-promote"),
    path("models/<int:pk>/evaluate/", views_registry.model_evaluate, name="model-evaluate"),
    path("models/<int:pk>/threshold/", views_registry.model_threshold, name="model-threshold"),
    path("models/<int:pk>/delete/", views_registry.model_delete, name="model-delete"),
    path("datasets/<int:pk>/aliases/<slug:alias>/rollback/", views_registry.alias_rollback,
         name="alias-rollback"),
    path("datasets/<int:pk>/aliases/<slug:alias>/remove/", views_registry.alias_remove,
         name="alias-remove"),
]
