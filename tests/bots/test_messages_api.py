"""A bot's messages over the JSON API (DESIGN.md section 6): reading the inbox and outbox, queueing a message."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from bots.models import Direction, Message, MessageStatus
from tests.helpers import RFC3339_UTC, assert_error, assert_invalid, make_bot
from whatsapp.models import Session

pytestmark = pytest.mark.django_db

CUSTOMER = "5511911112222@s.whatsapp.net"
MESSAGE_KEYS = {"id", "waId", "chat", "sender", "direction", "type", "text", "status", "createdAt"}


def messages_url(bot) -> str:
    return f"/api/bots/{bot.pk}/messages"


def conversation(bot, chat: str = CUSTOMER, count: int = 3) -> list[Message]:
    """Questions and answers, a minute apart."""
    start = timezone.now() - datetime.timedelta(hours=1)
    rows = []
    for n in range(count):
        question = Message.objects.create(
            bot=bot,
            chat=chat,
            sender=chat,
            direction=Direction.IN,
            wa_id=f"IN{n}",
            text=f"pergunta {n}",
            status=MessageStatus.REPLIED,
            created_at=start + datetime.timedelta(minutes=2 * n),
        )
        rows.append(question)
        rows.append(
            Message.objects.create(
                bot=bot,
                chat=chat,
                sender="5511987654321@s.whatsapp.net",
                direction=Direction.OUT,
                wa_id=f"OUT{n}",
                text=f"resposta {n}",
                status=MessageStatus.SENT,
                in_reply_to=question,
                created_at=start + datetime.timedelta(minutes=2 * n + 1),
            )
        )
    return rows


# --- GET ------------------------------------------------------------------------------------------


def test_it_lists_a_bots_messages_newest_first(alice_api, alice):
    bot = make_bot(alice)
    rows = conversation(bot)

    response = alice_api.get(messages_url(bot))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"messages"}
    assert [m["id"] for m in body["messages"]] == [row.pk for row in reversed(rows)]
    newest = body["messages"][0]
    assert set(newest) == MESSAGE_KEYS
    assert newest == {
        "id": rows[-1].pk,
        "waId": "OUT2",
        "chat": CUSTOMER,
        "sender": "5511987654321@s.whatsapp.net",
        "direction": "out",
        "type": "text",
        "text": "resposta 2",
        "status": "sent",
        "createdAt": newest["createdAt"],
    }
    assert RFC3339_UTC.match(newest["createdAt"])


def test_it_pages_back_with_before_and_limit(alice_api, alice):
    bot = make_bot(alice)
    rows = conversation(bot, count=5)
    ids = [row.pk for row in reversed(rows)]

    first = alice_api.get(messages_url(bot) + "?limit=4").json()["messages"]
    second = alice_api.get(messages_url(bot) + f"?limit=4&before={first[-1]['id']}").json()["messages"]
    last = alice_api.get(messages_url(bot) + f"?limit=4&before={ids[-1]}").json()["messages"]

    assert [m["id"] for m in first] == ids[:4]
    assert [m["id"] for m in second] == ids[4:8]
    assert last == []


def test_it_filters_by_chat_given_as_a_number_or_a_jid(alice_api, alice):
    bot = make_bot(alice)
    conversation(bot)
    other = conversation(bot, chat="5511933334444@s.whatsapp.net", count=1)

    by_number = alice_api.get(messages_url(bot) + "?chat=%2B5511933334444").json()["messages"]
    by_jid = alice_api.get(messages_url(bot) + "?chat=5511933334444@s.whatsapp.net").json()["messages"]

    assert [m["id"] for m in by_number] == [row.pk for row in reversed(other)]
    assert by_jid == by_number


def test_it_shows_no_waid_for_a_message_not_sent_yet(alice_api, alice):
    bot = make_bot(alice)
    alice_api.post(messages_url(bot), {"to": "5511911112222", "text": "Olá!"})

    (message,) = alice_api.get(messages_url(bot)).json()["messages"]

    assert (message["waId"], message["status"], message["direction"]) == (None, "queued", "out")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param("limit=0", "limit", id="limit-0"),
        pytest.param("limit=201", "limit", id="limit-201"),
        pytest.param("limit=ten", "limit", id="limit-word"),
        pytest.param("before=0", "before", id="before-0"),
        pytest.param("before=x", "before", id="before-word"),
        pytest.param("chat=alice", "chat", id="chat-not-a-number"),
        pytest.param("chat=5511911112222@lid.example", "chat", id="chat-other-server"),
        pytest.param("chats=5511911112222", "chats", id="unknown-parameter"),
    ],
)
def test_it_refuses_a_bad_query(alice_api, alice, query, field):
    bot = make_bot(alice)

    assert_invalid(alice_api.get(messages_url(bot) + "?" + query), field)


def test_it_accepts_the_limits_of_limit(alice_api, alice):
    bot = make_bot(alice)
    conversation(bot, count=1)

    assert len(alice_api.get(messages_url(bot) + "?limit=1").json()["messages"]) == 1
    assert len(alice_api.get(messages_url(bot) + "?limit=200").json()["messages"]) == 2


# --- POST -----------------------------------------------------------------------------------------


def test_it_queues_a_message_for_the_hosting_shard(alice_api, alice):
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(jid="5511987654321:7@s.whatsapp.net", phone="5511987654321")

    response = alice_api.post(messages_url(bot), {"to": "+5511911112222", "text": "Seu pedido saiu!"})

    assert response.status_code == 202, response.content
    body = response.json()
    message = Message.objects.get()
    assert body == {"id": message.pk, "status": "queued"}
    assert (message.direction, message.status, message.chat, message.text) == (
        Direction.OUT,
        MessageStatus.QUEUED,
        CUSTOMER,
        "Seu pedido saiu!",
    )
    assert message.sender == "5511987654321@s.whatsapp.net"
    assert message.in_reply_to is None


def test_it_queues_a_message_for_a_group(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(messages_url(bot), {"to": "120363025246125888@g.us", "text": "Bom dia, grupo!"})

    assert response.status_code == 202, response.content
    assert Message.objects.get().chat == "120363025246125888@g.us"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"text": "Oi"}, "to", id="to-missing"),
        pytest.param({"to": "5511911112222"}, "text", id="text-missing"),
        pytest.param({"to": "alice", "text": "Oi"}, "to", id="to-not-a-number"),
        pytest.param({"to": 5511911112222, "text": "Oi"}, "to", id="to-number-type"),
        pytest.param({"to": "5511911112222", "text": ""}, "text", id="text-empty"),
        pytest.param({"to": "5511911112222", "text": "  \n "}, "text", id="text-blank"),
        pytest.param({"to": "5511911112222", "text": "x" * 4097}, "text", id="text-too-long"),
        pytest.param({"to": "5511911112222", "text": None}, "text", id="text-null"),
        pytest.param({"to": "5511911112222", "text": "a\x00b"}, "text", id="text-nul"),
        pytest.param({"to": "5511911112222", "text": "Oi", "from": "x"}, "from", id="unknown-key"),
    ],
)
def test_it_refuses_a_bad_message(alice_api, alice, body, field):
    bot = make_bot(alice)

    assert_invalid(alice_api.post(messages_url(bot), body), field)
    assert not Message.objects.exists()


def test_it_accepts_a_message_of_the_longest_length(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(messages_url(bot), {"to": "5511911112222", "text": "x" * 4096})

    assert response.status_code == 202, response.content


def test_it_checks_auth_then_the_bot_then_the_body(alice_api, bob_api, anonymous_api, alice):
    bot = make_bot(alice)

    assert_error(anonymous_api.post(messages_url(bot), {"to": "x"}), 401, "unauthorized")
    assert_error(anonymous_api.get(messages_url(bot)), 401, "unauthorized")
    # Someone else's bot is no bot at all, whatever the body or query.
    assert_error(bob_api.post(messages_url(bot), {"to": "x"}), 404, "not_found")
    assert_error(bob_api.get(messages_url(bot) + "?limit=0"), 404, "not_found")
    assert_error(bob_api.post(messages_url(bot), raw=b"x" * (1024 * 1024 + 1)), 404, "not_found")
    assert_error(alice_api.post(messages_url(bot), raw=b"x" * (1024 * 1024 + 1)), 413, "payload_too_large")
    assert_error(
        alice_api.post(messages_url(bot), raw=b"to=1&text=oi", content_type="application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    )
    assert_error(alice_api.post(messages_url(bot), raw=b"{"), 400, "invalid_json")
    assert not Message.objects.exists()


def test_it_keeps_each_operators_messages_to_themselves(alice_api, bob_api, alice, bob):
    mine, theirs = make_bot(alice), make_bot(bob)
    conversation(theirs)

    assert alice_api.get(messages_url(mine)).json() == {"messages": []}
    assert_error(alice_api.get(messages_url(theirs)), 404, "not_found")


def test_it_hides_the_messages_of_a_deleted_bot(alice_api, alice):
    bot = make_bot(alice)
    conversation(bot)
    assert alice_api.delete(f"/api/bots/{bot.pk}").status_code == 204

    assert_error(alice_api.get(messages_url(bot)), 404, "not_found")
    assert_error(alice_api.post(messages_url(bot), {"to": "5511911112222", "text": "Oi"}), 404, "not_found")


def test_it_documents_the_message_endpoints(alice_api):
    document = alice_api.get("/api/openapi.json").json()

    operations = document["paths"]["/api/bots/{bot_id}/messages"]
    assert set(operations) == {"get", "post"}
    assert {p["name"] for p in operations["get"]["parameters"] if p["in"] == "query"} == {"chat", "limit", "before"}
    assert "202" in operations["post"]["responses"]
