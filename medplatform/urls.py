from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from classifier.api.predictions import PredictionViewSet
from classifier.api.views import DatasetViewSet, ModelVersionViewSet
from medplatform import auth
from medplatform import views as site_views
from medplatform.health import healthz

# The admin's log-in form says when log-in is locked after failed attempts (medplatform/auth.py).
admin.site.login_form = auth.LockoutAdminAuthenticationForm

router = DefaultRouter()
# No ``.json`` suffix routes: formats are negotiated (Accept, or ?format=), one URL per resource.
router.include_format_suffixes = False
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("models", ModelVersionViewSet, basename="modelversion")
router.register("predictions", PredictionViewSet, basename="prediction")

api_patterns = [
    path("auth/token/", auth.ObtainAuthTokenView.as_view(), name="api-token"),
    path("auth/token/rotate/", auth.RotateAuthTokenView.as_view(), name="api-token-rotate"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("training.api_urls")),
    path("", include("classifier.api.registry")),  # before the router: models/compare/ is no id
    path("", include(router.urls)),
]

urlpatterns = [
    path("", site_views.home, name="home"),
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
    path("", include("classifier.urls")),
    path("", include("classifier.urls_registry")),
    path("", include("training.urls")),
]

# Under /api/ the errors Django answers itself (no URL matched, an uncaught exception) are JSON
# ``{"detail": ...}`` like the API's own; the site's pages keep Django's error pages.
handler400 = "medplatform.views.bad_request"
handler403 = "medplatform.views.permission_denied"
handler404 = "medplatform.views.page_not_found"
handler500 = "medplatform.views.server_error"
