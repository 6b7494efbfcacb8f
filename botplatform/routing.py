"""WebSocket routes: the JSON API's connection events, and the live operator pages."""

from django.urls import path

from bots.consumers import ConnectionEventsConsumer
from bots.live import BotListConsumer, BotPageConsumer

websocket_urlpatterns = [
    path("api/bots/<uuid:bot_id>/connection-events", ConnectionEventsConsumer.as_asgi()),
    path("ws/bots/live", BotListConsumer.as_asgi()),
    path("ws/bots/<uuid:bot_id>/live", BotPageConsumer.as_asgi()),
]
