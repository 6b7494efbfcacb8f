"""WebSocket routes."""

from django.urls import path

from whatsapp.consumers import ConnectionEventsConsumer

websocket_urlpatterns = [
    path("api/bots/<uuid:bot_id>/connection-events", ConnectionEventsConsumer.as_asgi()),
]
