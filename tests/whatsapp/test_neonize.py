"""The neonize provider, offline, with the real library (WhatsApp's servers are unreachable here).

Handlers are fed neonize's own protobuf event objects; shards run as real
processes against whatsmeow stores on SQLite and PostgreSQL, and must stay up
whatever the library does.
"""

from __future__ import annotations

import datetime
import itertools
import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection

from bots.models import Message, MessageStatus
from tests.helpers import make_bot
from tests.hosting import orm, step_until
from tests.processes import pid_of, start_pool, wait_until
from tests.whatsapp.live import decode_qr
from whatsapp.models import Session, SessionEvent, Status
from whatsapp.providers.base import Client, Provider
from whatsapp.providers.neonize import NeonizeProvider
from whatsapp.providers.neonize_events import Handlers, inbound_from
from whatsapp.providers.store import bot_store, store_dsn, with_sslmode
from whatsapp.state import qr_image as png_data_url

neonize_events = pytest.importorskip("neonize.events")
from neonize.proto import Neonize_pb2 as proto  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo, ExtendedTextMessage  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage  # noqa: E402

PHONE = "5511987654321"
CUSTOMER = "5511955554444"


class Recorder:
    """Events as the provider interface receives them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def jid(user: str, device: int = 0, server: str = "s.whatsapp.net"):
    return proto.JID(User=user, Device=device, Server=server, RawAgent=0, Integrator=0, IsEmpty=False)


def text_event(text: str, *, from_me: bool = False, wa_id: str = "3EB0AAA", group: bool = False, mentions=()):
    chat = jid("120363025246125888", server="g.us") if group else jid(CUSTOMER)
    message = WAMessage(
        extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=ContextInfo(mentionedJID=list(mentions)))
    )
    source = proto.MessageSource(Chat=chat, Sender=jid(CUSTOMER, 3), IsFromMe=from_me, IsGroup=group)
    info = proto.MessageInfo(MessageSource=source, ID=wa_id, Pushname="Cliente", Timestamp=1_790_000_000_000)
    return neonize_events.MessageEv(Info=info, Message=message)


def zombies_of(parent: int) -> list[str]:
    """Children of a process that exited and were never waited for."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(") ")
            state, ppid = rest.split()[:2]
            if int(ppid) == parent and state == "Z":
                found.append(name.partition(" (")[2])
    return found


class HandlersOnlyClient(Client):
    """A client that never dials: the test feeds the shard neonize's events itself."""

    async def start(self):
        pass

    async def stop(self):
        pass

    async def logout(self):
        pass


class HandlersOnly(Provider):
    """The neonize provider's contract (one client per number), with clients that never dial."""

    name = "neonize"
    one_client_per_number = True

    def client(self, device, events):
        return HandlersOnlyClient(device, events)


def test_it_turns_neonize_events_into_provider_events():
    bot_id = uuid.uuid4()
    events = Recorder()
    handlers = Handlers(bot_id, events, lambda client: True, None)
    payload = "2@" + "A" * 30 + "," + ",".join(["B" * 44] * 3)

    handlers.qr(None, payload.encode())
    handlers.qr(None, payload.replace("A", "C").encode())
    assert events.calls[0] == ("qr", bot_id, payload, 60.0, "")
    assert events.calls[1][3] == 20.0, "codes after the first live 20 s"
    assert decode_qr(png_data_url(payload)) == payload

    handlers.pair_status(
        None,
        neonize_events.PairStatusEv(
            ID=jid(PHONE, 12), BusinessName="Padaria", Status=neonize_events.PairStatusEv.SUCCESS
        ),
    )
    assert events.calls[2] == ("paired", bot_id, f"{PHONE}:12@s.whatsapp.net", PHONE, "Padaria")
    handlers.connected(None, neonize_events.ConnectedEv())
    handlers.logged_out(None, neonize_events.LoggedOutEv(OnConnect=False))
    handlers.stream_replaced(None, neonize_events.StreamReplacedEv())
    handlers.temporary_ban(
        None, neonize_events.TemporaryBanEv(Code=neonize_events.TemporaryBanEv.BLOCKED_BY_USERS, Expire=3600)
    )
    handlers.client_outdated(None, neonize_events.ClientOutdatedEv())
    handlers.connect_failure(None, neonize_events.ConnectFailureEv(Reason=proto.LOGGED_OUT, Message="401"))
    handlers.connect_failure(None, neonize_events.ConnectFailureEv(Reason=proto.INTERNAL_SERVER_ERROR))
    kinds = [(call[0], call[2] if len(call) > 2 else None) for call in events.calls[3:]]
    assert kinds[0] == ("connected", None)
    assert kinds[1] == ("logged_out", "unlinked from the phone")
    assert kinds[2] == ("failed", "stream_replaced")
    assert kinds[3][0] == "failed" and kinds[3][1].startswith("temporary_ban: blocked_by_users, until ")
    until = kinds[3][1].split("until ")[1][:16]
    ends = datetime.datetime.strptime(until, "%Y-%m-%d %H:%M").replace(tzinfo=datetime.UTC)
    assert abs((ends - datetime.datetime.now(datetime.UTC)).total_seconds() - 3600) < 120, "the time the ban ends"
    assert kinds[4][0] == "failed" and kinds[4][1].startswith("client_outdated")
    assert kinds[5][0] == "logged_out"
    assert kinds[6][0] == "disconnected", "a server error is retried, not the end"


class Registry:
    """What Handlers.register sees of a neonize client: its event decorators."""

    def __init__(self) -> None:
        self.handlers: dict = {}
        self.event = self

    def qr(self, fn) -> None:
        self.handlers["qr"] = fn

    def __call__(self, event_type):
        return lambda fn: self.handlers.__setitem__(event_type, fn)


def test_it_says_why_whatsapp_logged_a_bot_out():
    bot_id = uuid.uuid4()
    events = Recorder()
    handlers = Handlers(bot_id, events, lambda client: True, None)

    for on_connect, reason in (
        (False, proto.LOGGED_OUT),  # stream error 401 device_removed: unlinked on the phone
        (True, proto.LOGGED_OUT),
        (True, proto.MAIN_DEVICE_GONE),
        (True, proto.UNKNOWN_LOGOUT),
    ):
        handlers.logged_out(None, neonize_events.LoggedOutEv(OnConnect=on_connect, Reason=reason))

    assert [call[2] for call in events.calls] == [
        "unlinked from the phone",
        "unlinked from the phone",
        "the WhatsApp account is locked (403): open WhatsApp on the phone",
        "the number is banned from WhatsApp (406)",
    ]


def test_it_lets_whatsmeow_reconnect_and_drops_the_events_of_a_replaced_client():
    bot_id = uuid.uuid4()
    events = Recorder()
    current, replaced = Registry(), Registry()
    handlers = Handlers(bot_id, events, lambda client: client is current, None)
    handlers.register(current)
    handlers.register(replaced)
    on = current.handlers

    on[neonize_events.DisconnectedEv](current, neonize_events.DisconnectedEv())
    on[neonize_events.KeepAliveTimeoutEv](current, neonize_events.KeepAliveTimeoutEv(ErrorCount=2))
    on[neonize_events.KeepAliveRestoredEv](current, neonize_events.KeepAliveRestoredEv())
    # A late Connected of a stopped client, and its QR: nothing.
    replaced.handlers[neonize_events.ConnectedEv](replaced, neonize_events.ConnectedEv())
    replaced.handlers["qr"](replaced, b"2@late")

    assert events.calls == [
        ("reconnecting", bot_id, "connection lost"),
        ("reconnecting", bot_id, "keepalive timeout (2 unanswered)"),
        ("connected", bot_id),
    ]


def test_it_reads_text_messages_and_marks_own_ones():
    inbound = inbound_from(text_event("Oi, vocês abrem hoje?"))
    assert inbound.text == "Oi, vocês abrem hoje?"
    assert inbound.chat == f"{CUSTOMER}@s.whatsapp.net"
    assert inbound.sender == f"{CUSTOMER}@s.whatsapp.net", "the sender without its device suffix"
    assert inbound.push_name == "Cliente"
    assert inbound.timestamp == datetime.datetime.fromtimestamp(1_790_000_000, tz=datetime.UTC), "milliseconds"
    assert not inbound.from_me and not inbound.is_group
    assert inbound_from(text_event("oi", from_me=True)).from_me
    group = inbound_from(text_event("@bot oi", group=True, mentions=[f"{PHONE}@s.whatsapp.net"]))
    assert group.is_group and group.chat.endswith("@g.us") and group.mentions == (f"{PHONE}@s.whatsapp.net",)


def message_event(message: WAMessage):
    event = text_event("")
    event.Message.CopyFrom(message)
    return event


def test_it_reads_the_caption_of_a_video_or_a_document_as_text():
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import DocumentMessage, VideoMessage

    video = inbound_from(message_event(WAMessage(videoMessage=VideoMessage(caption="Quanto custa este?"))))
    document = inbound_from(message_event(WAMessage(documentMessage=DocumentMessage(caption="Segue o pedido"))))
    bare = inbound_from(message_event(WAMessage(videoMessage=VideoMessage(seconds=12))))

    assert (video.type, video.text) == ("text", "Quanto custa este?")
    assert (document.type, document.text) == ("text", "Segue o pedido")
    assert (bare.type, bare.text) == ("other", ""), "a video without words is not a question"


def test_a_caption_or_a_quoted_reply_addresses_whom_it_names():
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ImageMessage

    bot = f"{PHONE}@s.whatsapp.net"
    photo = WAMessage(imageMessage=ImageMessage(caption="@bot tem esse?", contextInfo=ContextInfo(mentionedJID=[bot])))
    reply = WAMessage(
        extendedTextMessage=ExtendedTextMessage(
            text="e amanhã?",
            contextInfo=ContextInfo(
                participant=bot, stanzaID="3EB0BOT", quotedMessage=WAMessage(conversation="Abrimos às 8h")
            ),
        )
    )

    assert inbound_from(message_event(photo)).mentions == (bot,)
    assert inbound_from(message_event(reply)).mentions == (bot,), "a reply to the bot's message"
    assert inbound_from(text_event("bom dia")).mentions == ()


@pytest.mark.django_db(transaction=True)
async def test_the_shard_stores_what_neonize_reports(shards, alice):
    shard = await shards(providers={"neonize": HandlersOnly()})
    bot = await orm(make_bot, alice, whatsapp_provider="neonize")
    await orm(Session.objects.filter(pk=bot.pk).update, desired_connected=True, status=Status.CONNECTING)
    await step_until(shard, lambda: Session.objects.filter(pk=bot.pk, lease_owner=shard.shard_id).exists())
    handlers = Handlers(bot.pk, shard.events, lambda client: True, None)
    payload = "2@" + "Q" * 30 + "," + ",".join(["K" * 44] * 3)

    handlers.qr(None, payload.encode())
    await step_until(shard, lambda: Session.objects.get(pk=bot.pk).status == Status.QR_REQUIRED)
    assert decode_qr((await orm(Session.objects.get, pk=bot.pk)).qr_code) == payload

    handlers.pair_status(
        None, neonize_events.PairStatusEv(ID=jid(PHONE, 12), Status=neonize_events.PairStatusEv.SUCCESS)
    )
    handlers.connected(None, neonize_events.ConnectedEv())
    await step_until(shard, lambda: Session.objects.get(pk=bot.pk).status == Status.CONNECTED)
    session = await orm(Session.objects.get, pk=bot.pk)
    assert session.jid == f"{PHONE}:12@s.whatsapp.net" and session.phone == PHONE

    handlers.message(None, text_event("Bom dia!", wa_id="IN1"))
    handlers.message(None, text_event("eu mesmo", wa_id="OWN1", from_me=True))
    await step_until(shard, lambda: Message.objects.filter(bot=bot).count() == 2)
    incoming = await orm(Message.objects.get, bot=bot, wa_id="IN1")
    assert incoming.text == "Bom dia!" and incoming.direction == "in" and not incoming.from_me
    own = await orm(Message.objects.get, bot=bot, wa_id="OWN1")
    assert own.from_me and own.status != MessageStatus.REPLIED
    assert not await orm(Message.objects.filter(bot=bot, direction="out").exists)

    handlers.logged_out(None, neonize_events.LoggedOutEv(OnConnect=False))
    await step_until(shard, lambda: Session.objects.get(pk=bot.pk).status == Status.LOGGED_OUT)
    session = await orm(Session.objects.get, pk=bot.pk)
    assert session.jid == "" and session.phone == "" and not session.desired_connected


def test_it_derives_the_store_from_the_main_database(settings):
    settings.WHATSAPP_STORE_URL = None
    dsn = store_dsn()
    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        assert dsn.endswith(".whatsmeow.sqlite3") and Path(dsn).parent == Path(name).parent
        assert ":memory:" not in dsn
    else:
        assert dsn.startswith("postgres://") and f"/{name}?" in dsn and "sslmode=disable" in dsn
    assert with_sslmode("postgres://u@db.example.com:5432/x?sslmode=require").endswith("sslmode=require")
    assert "sslmode" not in with_sslmode("postgres://u@db.example.com:5432/x")


# --- Real shard processes with the real library, offline -------------------------------------

FAST_RETRIES = {"WHATSAPP_BACKOFF_BASE": "0.05", "WHATSAPP_BACKOFF_CAP": "0.2"}


def neonize_bot(owner, **session) -> str:
    bot = make_bot(owner, whatsapp_provider="neonize")
    Session.objects.filter(pk=bot.pk).update(desired_connected=True, status=Status.CONNECTING, **session)
    return str(bot.pk)


def store_tables(dsn: str) -> set[str]:
    if dsn.startswith("postgres"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'whatsmeow_%%'")
            return {row[0] for row in cursor.fetchall()}
    with sqlite3.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'whatsmeow_%'")}


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["main database", "sqlite file"])
def test_an_offline_shard_backs_off_then_fails_and_stays_up(alice, tmp_path, store):
    env = dict(FAST_RETRIES)
    if store == "sqlite file":
        env["WHATSAPP_STORE_URL"] = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    bot_id = neonize_bot(alice)
    pool = start_pool(**env)
    try:
        wait_until(lambda: Session.objects.get(pk=bot_id).status == Status.FAILED, timeout=60, message="never gave up")
        session = Session.objects.get(pk=bot_id)
        assert session.last_error.startswith("gave up after 8 failures: connect failed")
        assert not session.desired_connected
        retries = SessionEvent.objects.filter(session_id=bot_id, event="connecting").exclude(frame__lastError=None)
        assert retries.count() >= 7, "each failure is a visible retry"
        assert pool.process.poll() is None
        assert "exited with" not in pool.log(), "the shard process stayed alive"
        assert zombies_of(pid_of("--shard-id")) == [], "neonize's import leaves no unreaped children"
        # PostgreSQL: one schema, made before any client connects; SQLite: a file of the bot's own.
        dsn = bot_store(str(tmp_path / "store.sqlite3"), bot_id) if store == "sqlite file" else store_dsn()
        assert "whatsmeow_device" in store_tables(dsn), "the store schema was created"
    finally:
        assert pool.stop() == 0


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_device_missing_from_the_store_is_logged_out_not_a_crash(alice):
    bot_id = neonize_bot(alice, jid=f"{PHONE}:7@s.whatsapp.net", phone=PHONE)
    pool = start_pool(**FAST_RETRIES)
    try:
        wait_until(lambda: Session.objects.get(pk=bot_id).status == Status.LOGGED_OUT, timeout=30)
        session = Session.objects.get(pk=bot_id)
        assert session.last_error == "the linked device is no longer in the store"
        assert session.jid == "" and not session.desired_connected
        assert pool.process.poll() is None and "exited with" not in pool.log()
    finally:
        pool.stop()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_killed_neonize_shard_is_restarted_and_resumes_its_bots(alice):
    bots = [neonize_bot(alice) for _ in range(3)]
    pool = start_pool(WHATSAPP_BACKOFF_BASE="20", WHATSAPP_BACKOFF_CAP="20")
    try:
        owner = wait_until(
            lambda: (
                (o := set(Session.objects.filter(pk__in=bots).values_list("lease_owner", flat=True))) - {""}
                and len(o) == 1
                and o.pop()
            ),
            timeout=30,
        )
        wait_until(
            lambda: (
                SessionEvent.objects.filter(session_id__in=bots, frame__lastError__startswith="connect failed").count()
                == 3
            ),
            timeout=30,
        )
        os.kill(pid_of(f"--shard-id {owner}"), signal.SIGKILL)
        wait_until(
            lambda: all(
                o not in ("", owner) for o in Session.objects.filter(pk__in=bots).values_list("lease_owner", flat=True)
            ),
            timeout=30,
            message="the bots were not taken up again",
        )
        assert "exited with -9" in pool.log()
        assert not Session.objects.filter(pk__in=bots, status=Status.FAILED).exists()
    finally:
        pool.stop()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_shard_recycles_itself_after_too_many_connect_attempts(alice):
    bot_id = neonize_bot(alice)
    pool = start_pool(WHATSAPP_RECYCLE_AFTER="3", **FAST_RETRIES)
    try:
        wait_until(lambda: "exited with 75" in pool.log(), timeout=30, message="the shard did not recycle")
        first_owner_gone = wait_until(
            lambda: (
                Session.objects.filter(pk=bot_id).exclude(lease_owner="").exists()
                or Session.objects.get(pk=bot_id).status == Status.FAILED
            ),
            timeout=30,
        )
        assert first_owner_gone
        assert pool.log().count("started as pid") >= 2, "the supervisor started a fresh shard"
        stopped = SessionEvent.objects.filter(session_id=bot_id, frame__lastError="worker stopped")
        assert stopped.exists(), "the draining shard released the bot as a clean stop"
    finally:
        pool.stop()


def test_importing_the_provider_does_not_load_neonize_in_the_web():
    import subprocess
    import sys

    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE']='tests.settings'; django.setup();"
        "import botplatform.urls, pool.shard, whatsapp.providers.neonize;"
        "print('neonize' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2]
    )
    assert done.stdout.strip() == "False", done.stderr


def test_it_asks_for_the_pairing_code_from_the_first_qr():
    bot_id = uuid.uuid4()
    events = Recorder()
    asked = []

    def pair(client):
        asked.append(client)
        return "ABCD-EFGH"

    handlers = Handlers(bot_id, events, lambda client: True, pair)
    handlers.qr("the client", b"2@first")
    wait_until(lambda: events.calls, timeout=5)
    handlers.qr("the client", b"2@second")
    assert asked == ["the client"], "asked once, when the websocket is up"
    assert events.calls == [
        ("qr", bot_id, "2@first", 60.0, "ABCD-EFGH"),
        ("qr", bot_id, "2@second", 20.0, "ABCD-EFGH"),
    ]


@pytest.mark.django_db(transaction=True)
async def test_two_bots_of_one_number_never_share_a_shard(shards, alice):
    shard = await shards(providers={"neonize": HandlersOnly()})
    first = await orm(make_bot, alice, whatsapp_provider="neonize")
    second = await orm(make_bot, alice, whatsapp_provider="neonize")
    for bot in (first, second):
        await orm(
            Session.objects.filter(pk=bot.pk).update, desired_connected=True, status=Status.CONNECTING, phone=PHONE
        )
    for _ in range(5):
        await shard.step()
    hosted = await orm(lambda: list(Session.objects.exclude(lease_owner="").values_list("pk", flat=True)))
    assert len(hosted) == 1, "the second bot of that number is left for another shard"


@pytest.mark.django_db(transaction=True)
async def test_pairing_a_number_that_another_bot_uses_is_refused(shards, alice):
    shard = await shards(providers={"neonize": HandlersOnly()})
    linked = await orm(make_bot, alice, whatsapp_provider="neonize")
    await orm(Session.objects.filter(pk=linked.pk).update, phone=PHONE, jid=f"{PHONE}:3@s.whatsapp.net")
    bot = await orm(make_bot, alice, whatsapp_provider="neonize")
    await orm(Session.objects.filter(pk=bot.pk).update, desired_connected=True, status=Status.CONNECTING)
    await step_until(shard, lambda: Session.objects.filter(pk=bot.pk, lease_owner=shard.shard_id).exists())

    handlers = Handlers(bot.pk, shard.events, lambda client: True, None)
    handlers.pair_status(
        None, neonize_events.PairStatusEv(ID=jid(PHONE, 9), Status=neonize_events.PairStatusEv.SUCCESS)
    )
    handlers.connected(None, neonize_events.ConnectedEv())
    # Failed, then released: the shard's last two writes.
    await step_until(shard, lambda: Session.objects.filter(pk=bot.pk, status=Status.FAILED, lease_owner="").exists())
    session = await orm(Session.objects.get, pk=bot.pk)
    assert "already linked to another bot" in session.last_error
    assert session.jid == "" and not session.desired_connected and session.lease_owner == ""
    assert (await orm(Session.objects.get, pk=linked.pk)).phone == PHONE, "the first bot keeps its number"


@pytest.mark.django_db(transaction=True)
def test_pair_phone_refuses_a_number_another_bot_uses(alice, alice_api):
    linked = make_bot(alice, whatsapp_provider="neonize")
    Session.objects.filter(pk=linked.pk).update(phone=PHONE, status=Status.CONNECTED)
    bot = make_bot(alice, whatsapp_provider="neonize")
    response = alice_api.post(f"/api/bots/{bot.pk}/pair-phone", {"phone": f"+{PHONE}"})
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "phone_in_use"
    assert not Session.objects.get(pk=bot.pk).desired_connected


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_store_that_cannot_be_opened_fails_the_bots_not_the_shard(alice):
    bot_id = neonize_bot(alice)
    simulator_bot = make_bot(alice)
    Session.objects.filter(pk=simulator_bot.pk).update(desired_connected=True, status=Status.CONNECTING)
    # Nothing listens on port 1: the store cannot be reached.
    pool = start_pool(WHATSAPP_STORE_URL="postgres://postgres@127.0.0.1:1/nowhere", **FAST_RETRIES)
    try:
        wait_until(lambda: Session.objects.get(pk=bot_id).status == Status.FAILED, timeout=40)
        assert Session.objects.get(pk=bot_id).last_error.startswith("WhatsApp library unavailable")
        wait_until(
            lambda: Session.objects.get(pk=simulator_bot.pk).status == Status.QR_REQUIRED,
            timeout=20,
            message="the shard kept serving its other bots",
        )
        assert pool.process.poll() is None and "exited with" not in pool.log()
    finally:
        pool.stop()


def test_a_shard_dials_whatsapp_two_at_a_time_and_staggered():
    """A shard restarted with many bots does not hit WhatsApp with all their connects at once."""
    provider = NeonizeProvider(db=None, max_dials=2, stagger=0.1)
    clients = [SimpleNamespace(stopping=False) for _ in range(6)]
    started: list[float] = []
    in_flight, peak, lock = 0, 0, threading.Lock()

    def dial(client) -> None:
        nonlocal in_flight, peak
        assert provider.acquire_dial(client)
        with lock:
            started.append(time.monotonic())
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)  # until the connection's first event
        with lock:
            in_flight -= 1
        provider.release_dial(client)

    threads = [threading.Thread(target=dial, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(started) == 6 and provider.attempts == 6
    assert peak <= 2, "never more than two dials in flight"
    gaps = [later - earlier for earlier, later in itertools.pairwise(sorted(started))]
    assert min(gaps) >= 0.09, f"dials are at least the stagger apart: {gaps}"
