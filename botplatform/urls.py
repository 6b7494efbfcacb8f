"""URL wiring: the pages, the admin, the JSON API and its routers, health and metrics."""

from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from botplatform.api import Api, SessionAuth
from bots import monitoring
from bots.api import bots, messages, simulator, whatsapp
from bots.api.base import BearerAuth

api = Api(
    title="WhatsApp AI bot platform",
    version="1.0",
    description="Bots that answer WhatsApp messages with Google Gemini.",
    auth=[BearerAuth(), SessionAuth()],
    urls_namespace="api",
    # Swagger UI (vendored by django-ninja) sets styles on its elements: its page alone allows them.
    docs_decorator=csp_update({"style-src": ["'unsafe-inline'"]}),
)
api.add_router("/bots", bots.router)
api.add_router("/bots", messages.router)
api.add_router("/bots", whatsapp.router)
api.add_router("/bots", simulator.router)

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
