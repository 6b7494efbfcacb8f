"""The operator's pages: the bot list, the create-bot wizard, a bot's pairing panel, conversations, settings.

Function views over Django forms; with htmx (django-htmx's ``request.htmx``)
they answer with the partials the page swaps, without it with whole pages and
redirects, so every page also works without JavaScript. Actions go through
bots/control.py like the JSON API's.
"""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import get_language, ngettext
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from bots import control, live
from bots.forms import WIZARD_STEPS, NewBotForm, NewChatForm, PairPhoneForm, SendMessageForm, SettingsForm
from bots.models import Bot, Message
from whatsapp.models import Status


def get_bot_for_user(user, bot_id: uuid.UUID | str) -> Bot:
    """The user's own live bot, or 404: a bot that is not yours does not exist for you.

    Every page view looks bots up through here (the page sockets through ``Bot.objects.visible_to`` too).
    """
    return get_object_or_404(Bot.objects.visible_to(user).select_related("session"), pk=bot_id)


def _get_bot_for_user(request: HttpRequest, bot_id: uuid.UUID) -> Bot:
    return get_bot_for_user(request.user, bot_id)


# --- The bot list ---------------------------------------------------------------


def _live_urls(websocket: str, poll: str, **params: str) -> dict:
    """Where a page gets its live updates: the WebSocket, or the view it polls when that fails."""
    query = urlencode(params)
    return {
        "ws_url": f"{websocket}?{urlencode({'lang': get_language(), **params})}",
        "poll_url": f"{poll}?{query}" if query else poll,
    }


@login_required
def index(request: HttpRequest) -> HttpResponse:
    bots = Bot.objects.visible_to(request.user).select_related("session")
    return render(request, "bots/index.html", {"bots": bots, **_live_urls("/ws/bots/live", reverse("bots_live"))})


@login_required
@require_GET
def bots_live(request: HttpRequest) -> HttpResponse:
    """The polling fallback of the bot list: its rows."""
    html, _ = live.list_updates(request.user)
    return HttpResponse(html) if html else HttpResponse(status=204)


# --- The create-bot wizard --------------------------------------------------------


def _wizard_step(request: HttpRequest) -> int:
    try:
        return min(max(int(request.POST.get("step", 0)), 0), len(WIZARD_STEPS) - 1)
    except ValueError:
        return 0


def _render_wizard(request: HttpRequest, step: int, form, status: int = 200) -> HttpResponse:
    carried = [
        (name, value)
        for name in NewBotForm._meta.fields
        if name not in form.fields
        for value in request.POST.getlist(name)
    ]
    context = {
        "form": form,
        "step": step,
        "steps": [s.title for s in WIZARD_STEPS],
        "last": step == len(WIZARD_STEPS) - 1,
        "carried": carried,
    }
    template = "bots/_wizard.html" if request.htmx else "bots/new.html"
    return render(request, template, context, status=status)


@login_required
def bot_new(request: HttpRequest) -> HttpResponse:
    """Name and persona, AI settings, provider; then the bot is created and connects, straight to pairing.

    Earlier steps travel as hidden fields and are validated again, all together, before the bot is created.
    """
    if request.method != "POST":
        return _render_wizard(request, 0, WIZARD_STEPS[0]())
    step = _wizard_step(request)
    if "back" in request.POST:
        step = max(step - 1, 0)
        return _render_wizard(request, step, WIZARD_STEPS[step](initial=request.POST.dict()))
    form = WIZARD_STEPS[step](request.POST)
    if not form.is_valid():
        return _render_wizard(request, step, form, status=422)
    if step + 1 < len(WIZARD_STEPS):
        return _render_wizard(request, step + 1, WIZARD_STEPS[step + 1](initial=request.POST.dict()))

    whole = NewBotForm(request.POST)
    if not whole.is_valid():
        # A carried field was tampered with: back to the step that has it, with its errors.
        step = next((i for i, s in enumerate(WIZARD_STEPS) if set(s._meta.fields) & set(whole.errors)), 0)
        return _render_wizard(request, step, WIZARD_STEPS[step](request.POST), status=422)
    with transaction.atomic():
        bot = whole.save(commit=False)
        bot.owner = request.user
        bot.save()
    # As the API's autoConnect: over the rate limit, the bot is created all the same, disconnected.
    session = control.request_connect(bot, request.user, autoconnect=True)
    if session.last_error == "rate_limited":
        messages.warning(request, _("The bot was created, but it asked to connect too often: try again in a minute."))
    else:
        messages.success(request, _("The bot “%(name)s” was created. Link it to WhatsApp below.") % {"name": bot.name})
    url = reverse("bot_detail", args=[bot.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


# --- A bot's page: connection, conversations, history --------------------------------


@login_required
def bot_detail(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    session = bot.session
    # The newest message id before the list is read: a message arriving in between is sent again live.
    cursor = live.page_cursor(session, newest=live.newest_message_id(bot))
    context = {
        **live.connection_context(bot, session),
        "events": live.history(bot),
        "chats": live.chats(bot),
        "cursor": cursor,
        "new_chat_form": NewChatForm(),
        **_live_urls(f"/ws/bots/{bot.pk}/live", reverse("bot_live", args=[bot.pk])),
    }
    return render(request, "bots/detail.html", context)


@login_required
@require_GET
@never_cache
def bot_live(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    """The polling fallback of the bot and conversation pages: what the page consumer would have sent."""
    bot = _get_bot_for_user(request, bot_id)
    chat = request.GET.get("chat") or None
    cursor = live.Cursor.from_query(dict(request.GET.lists()))
    html, _ = live.bot_updates(bot, cursor, chat=chat, csrf_token=get_token(request))
    return HttpResponse(html) if html else HttpResponse(status=204)


def _connection_result(
    request: HttpRequest, bot: Bot, *, notice: str = "", error: str = "", status: int = 200
) -> HttpResponse:
    """After an action: htmx swaps the panel and the notice; without it, back to the bot's page."""
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif notice:
            messages.info(request, notice)
        return redirect("bot_detail", bot.pk)
    bot.session.refresh_from_db()
    context = {**live.connection_context(bot, bot.session), "oob": True, "notice": notice, "error": error}
    return render(request, "bots/_connection_result.html", context, status=status)


def _request_connect(request: HttpRequest, bot: Bot, notice: str, pairing_phone: str = "") -> HttpResponse:
    """A connect request as the API makes it (bots/control.py), its rate limits shown as a clear message."""
    try:
        control.request_connect(bot, request.user, pairing_phone=pairing_phone)
    except control.RateLimited as exc:
        error = ngettext(
            "Too many connection attempts. Try again in %(seconds)d second.",
            "Too many connection attempts. Try again in %(seconds)d seconds.",
            exc.retry_after,
        ) % {"seconds": exc.retry_after}
        response = _connection_result(request, bot, error=error, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response
    return _connection_result(request, bot, notice=notice)


@login_required
@require_POST
def bot_connect(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    """Connect, or retry after an expired QR: a new QR code appears live."""
    bot = _get_bot_for_user(request, bot_id)
    if bot.session.status in (Status.QR_REQUIRED, Status.CONNECTED):
        return _connection_result(request, bot)
    return _request_connect(request, bot, _("Connecting to WhatsApp…"))


@login_required
@require_POST
def bot_pair_phone(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    """Link by phone number: WhatsApp shows a code to type on the phone instead of scanning."""
    bot = _get_bot_for_user(request, bot_id)
    form = PairPhoneForm(request.POST)
    if not form.is_valid():
        return _connection_result(request, bot, error=form.errors["phone"][0], status=422)
    if bot.session.status == Status.CONNECTED:
        error = _("This bot is connected already. Log it out first to link another phone.")
        return _connection_result(request, bot, error=error, status=409)
    notice = _("Asking WhatsApp for a pairing code…")
    return _request_connect(request, bot, notice, pairing_phone=form.cleaned_data["phone"])


@login_required
@require_POST
def bot_disconnect(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    control.request_disconnect(bot)
    return _connection_result(request, bot, notice=_("Disconnecting… The phone stays linked."))


@login_required
@require_POST
def bot_logout(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    control.request_logout(bot)
    return _connection_result(request, bot, notice=_("Logging out… The device will be unlinked from the phone."))


# --- Conversations -----------------------------------------------------------------


@login_required
def conversation(request: HttpRequest, bot_id: uuid.UUID, chat: str) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    shown = live.conversation(bot, chat)
    if not shown:
        raise Http404("No such conversation.")
    context = {
        **live.connection_context(bot, bot.session),
        "chat": chat,
        "chat_name": next((m.push_name for m in reversed(shown) if m.push_name), "") or live.display_jid(chat),
        "number": live.display_jid(chat),
        "messages_shown": shown,
        "cursor": live.page_cursor(bot.session, shown),
        "form": SendMessageForm(),
        **_live_urls(f"/ws/bots/{bot.pk}/live", reverse("bot_live", args=[bot.pk]), chat=chat),
    }
    return render(request, "bots/conversation.html", context)


@login_required
@require_POST
def conversation_send(request: HttpRequest, bot_id: uuid.UUID, chat: str) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    if not Message.objects.filter(bot=bot, chat=chat).exists():
        raise Http404("No such conversation.")
    form = SendMessageForm(request.POST)
    if form.is_valid():
        control.queue_message(bot, chat, form.cleaned_data["text"])
        if not request.htmx:
            return redirect("conversation", bot.pk, chat)
        # The message reaches the conversation the way every other does, live, with its status as it moves.
        fresh = SendMessageForm()
        fresh.fields["text"].widget.attrs["autofocus"] = True
        response = render(request, "bots/_send_form.html", {"bot": bot, "chat": chat, "form": fresh})
        return trigger_client_event(response, "live:changed")
    if not request.htmx:
        messages.error(request, form.errors["text"][0])
        return redirect("conversation", bot.pk, chat)
    return render(request, "bots/_send_form.html", {"bot": bot, "chat": chat, "form": form}, status=422)


@login_required
@require_POST
def conversation_new(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    """Write to a number first: the conversation starts with the operator's message."""
    bot = _get_bot_for_user(request, bot_id)
    form = NewChatForm(request.POST)
    if not form.is_valid():
        html = render_to_string("bots/_new_chat_form.html", {"bot": bot, "new_chat_form": form}, request=request)
        if request.htmx:
            return HttpResponse(html, status=422)
        for errors in form.errors.values():
            messages.error(request, errors[0])
        return redirect("bot_detail", bot.pk)
    message = control.queue_message(bot, form.cleaned_data["to"], form.cleaned_data["text"])
    url = reverse("conversation", args=[bot.pk, message.chat])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


# --- Settings ------------------------------------------------------------------------


@login_required
def bot_settings(request: HttpRequest, bot_id: uuid.UUID) -> HttpResponse:
    bot = _get_bot_for_user(request, bot_id)
    form = SettingsForm(request.POST or None, instance=bot)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, _("Settings saved."))
        return redirect("bot_detail", bot.pk)
    status = 422 if form.is_bound else 200
    return render(request, "bots/settings.html", {"bot": bot, "form": form}, status=status)
