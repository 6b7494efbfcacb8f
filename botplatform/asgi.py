"""ASGI entry point, served by daphne: HTTP through Django, WebSockets through Channels.

WebSockets pass botplatform/handshake.py first (a route, then the Origin), then
the session cookie middleware; the consumers authenticate themselves on any of
the loop's threads (bots/sockets.py), rather than in Channels' AuthMiddleware,
which runs every handshake's user lookup on one thread.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botplatform.settings")
# The web borrows its PostgreSQL connections from a pool (botplatform/settings.py says why). Said for
# this process's settings only: a process that imports this module passes nothing on to its children.
_pool_asked = "DATABASE_POOL" in os.environ
os.environ.setdefault("DATABASE_POOL", "1")
# Django must be set up before anything imports models (the Channels tutorial's order).
django_asgi_app = get_asgi_application()
if not _pool_asked:
    del os.environ["DATABASE_POOL"]

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from botplatform import handshake  # noqa: E402
from botplatform.routing import websocket_urlpatterns  # noqa: E402

handshake.teach_daphne_denial_responses()
router = URLRouter(websocket_urlpatterns)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": handshake.Handshake(router, SessionMiddlewareStack(router)),
    }
)
