"""The WhatsApp part of the JSON API: connect, pair by phone, status, disconnect, logout."""

from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection
from django.http import HttpRequest
from ninja import Router, Schema
from ninja import Status as Answer
from pydantic import ConfigDict

from botplatform.api import ApiError, parse_body
from bots import control
from bots.api.base import ERRORS, Error, PhoneDigits, WhatsappStatus, get_bot, json_body
from whatsapp.models import Session, Status

router = Router(tags=["whatsapp"])

# How long connect-whatsapp and pair-phone wait for the first QR or pairing code.
CONNECT_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.1
# No QR or code comes from these without another request (a paired device that
# reconnected needs none), so the wait ends there rather than at its deadline.
SETTLED = frozenset({Status.CONNECTED, Status.FAILED, Status.LOGGED_OUT, Status.QR_TIMEOUT, Status.DISCONNECTED})


class PairPhone(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)
    phone: PhoneDigits


def _status(bot_id: uuid.UUID) -> dict:
    """The status object, read without keeping a database connection open."""
    try:
        return Session.objects.get(pk=bot_id).status_payload()
    finally:
        connection.close()


def _connect(request: HttpRequest, bot_id: uuid.UUID, pairing: bool) -> tuple[dict | None, str]:
    """Lookup, checks and the connect request, all before any waiting."""
    try:
        bot = get_bot(request, bot_id)
        phone = parse_body(request, PairPhone).phone if pairing else ""
        status = bot.session.status
        if pairing and status == Status.CONNECTED:
            raise ApiError(409, "already_connected", "This bot is connected already; log it out to pair another phone.")
        if pairing and bot.whatsapp_provider == "neonize" and control.phone_in_use(bot.pk, phone):
            raise ApiError(409, "phone_in_use", "This number is already linked to another bot; unlink it there first.")
        if not pairing and status in (Status.QR_REQUIRED, Status.CONNECTED):
            return bot.session.status_payload(), ""
        try:
            control.request_connect(bot, request.auth, pairing_phone=phone)
        except control.RateLimited as exc:
            raise ApiError(429, "rate_limited", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        return None, phone
    finally:
        close_old_connections()


async def _wait_for(bot_id: uuid.UUID, ready) -> tuple[int, dict]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_WAIT_SECONDS
    payload = await sync_to_async(_status)(bot_id)
    while not ready(payload) and loop.time() < deadline:
        if payload["status"] in SETTLED:
            break
        await asyncio.sleep(POLL_SECONDS)
        payload = await sync_to_async(_status)(bot_id)
    return Answer(200 if ready(payload) else 202, payload)


CONNECT_ERRORS = {**ERRORS, 409: Error, 429: Error}


@router.post(
    "/{uuid:bot_id}/connect-whatsapp",
    response={200: WhatsappStatus, 202: WhatsappStatus, **CONNECT_ERRORS},
    summary="Connect the bot to WhatsApp and get a QR code",
    exclude_none=True,
)
async def connect_whatsapp(request: HttpRequest, bot_id: uuid.UUID):
    """Already showing a QR or connected: the state at once. Else waits up to 5 s for a QR (200), or 202."""
    immediate, _ = await sync_to_async(_connect)(request, bot_id, False)
    if immediate is not None:
        return Answer(200, immediate)
    return await _wait_for(bot_id, lambda p: p["status"] in (Status.QR_REQUIRED, Status.CONNECTED))


@router.post(
    "/{uuid:bot_id}/pair-phone",
    response={200: WhatsappStatus, 202: WhatsappStatus, **CONNECT_ERRORS},
    openapi_extra=json_body(PairPhone),
    summary="Pair by phone number: get a code to type on the phone",
    exclude_none=True,
)
async def pair_phone(request: HttpRequest, bot_id: uuid.UUID):
    await sync_to_async(_connect)(request, bot_id, True)
    return await _wait_for(bot_id, lambda p: bool(p.get("pairingCode")))


def _read_status(request: HttpRequest, bot_id: uuid.UUID) -> dict:
    return get_bot(request, bot_id).session.status_payload()


@router.get(
    "/{uuid:bot_id}/whatsapp-status",
    response={200: WhatsappStatus, **ERRORS},
    summary="The bot's WhatsApp connection",
    exclude_none=True,
)
def whatsapp_status(request: HttpRequest, bot_id: uuid.UUID):
    return _read_status(request, bot_id)


@router.post(
    "/{uuid:bot_id}/disconnect-whatsapp",
    response={202: WhatsappStatus, **ERRORS},
    summary="Disconnect; the device stays linked",
    exclude_none=True,
)
def disconnect_whatsapp(request: HttpRequest, bot_id: uuid.UUID):
    return Answer(202, control.request_disconnect(get_bot(request, bot_id)).status_payload())


@router.post(
    "/{uuid:bot_id}/logout-whatsapp",
    response={202: WhatsappStatus, **ERRORS},
    summary="Log out: unlink the device from the phone",
    exclude_none=True,
)
def logout_whatsapp(request: HttpRequest, bot_id: uuid.UUID):
    return Answer(202, control.request_logout(get_bot(request, bot_id)).status_payload())
