from django.urls import path

from training import views

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_new, name="job-new"),
    path("jobs/<int:pk>/", views.job_detail, name="job-detail"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<int:pk>/delete/", views.job_delete, name="job-delete"),
    path("inference/", views.inference_list, name="inference-list"),
    path("inference/<int:pk>/", views.inference_detail, name="inference-detail"),
    path("inference/<int:pk>/delete/", views.inference_delete, name="inference-delete"),
]
