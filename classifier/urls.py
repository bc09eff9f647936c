from django.urls import path

from classifier import views, views_predict

urlpatterns = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/import/", views.dataset_import_page, name="dataset-import"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<int:pk>/delete/", views.dataset_delete, name="dataset-delete"),
    path("classify/", views_predict.classify_page, name="classify"),
    path("predictions/", views_predict.prediction_list_page, name="prediction-list"),
    path("predictions/<int:pk>/delete/", views_predict.prediction_delete_page,
         name="prediction-delete"),
]
