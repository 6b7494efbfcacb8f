from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from botplatform.api import api
from bots.api import router as bots_router
from whatsapp import monitoring
from whatsapp.api import router as whatsapp_router
from whatsapp.simulator_api import router as simulator_router

api.add_router("/bots", bots_router)
api.add_router("/bots", whatsapp_router)
api.add_router("/bots", simulator_router)

urlpatterns = [
    path("", include("bots.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("healthz", monitoring.healthz, name="healthz"),
    path("metrics", monitoring.metrics, name="metrics"),
]
