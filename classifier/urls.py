from django.urls import path

from classifier import views

urlpatterns = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/import/", views.dataset_import_page, name="dataset-import"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset-detail"),
]
