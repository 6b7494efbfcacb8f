"""The operator's pages (bots/views.py); the JSON API lives under /api/."""

from django.urls import path

from bots import views

urlpatterns = [
    path("", views.index, name="index"),
    path("bots/live", views.bots_live, name="bots_live"),
    path("bots/new/", views.bot_new, name="bot_new"),
    path("bots/<uuid:bot_id>/", views.bot_detail, name="bot_detail"),
    path("bots/<uuid:bot_id>/live", views.bot_live, name="bot_live"),
    path("bots/<uuid:bot_id>/settings/", views.bot_settings, name="bot_settings"),
    path("bots/<uuid:bot_id>/connect", views.bot_connect, name="bot_connect"),
    path("bots/<uuid:bot_id>/pair-phone", views.bot_pair_phone, name="bot_pair_phone"),
    path("bots/<uuid:bot_id>/disconnect", views.bot_disconnect, name="bot_disconnect"),
    path("bots/<uuid:bot_id>/logout", views.bot_logout, name="bot_logout"),
    path("bots/<uuid:bot_id>/chats/new", views.conversation_new, name="conversation_new"),
    path("bots/<uuid:bot_id>/chats/<str:chat>/", views.conversation, name="conversation"),
    path("bots/<uuid:bot_id>/chats/<str:chat>/send", views.conversation_send, name="conversation_send"),
]
