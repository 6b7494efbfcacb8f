"""WebSocket routes; consumers plug in here."""

websocket_urlpatterns: list = []
