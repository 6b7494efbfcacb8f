"""One conversation per person, across LID and phone addressing (docs/api.md, "Phone numbers").

WhatsApp addresses a customer by phone JID or by LID (``<lid>@lid``), and gives the phone JID
beside a LID when it has it (whatsmeow's SenderAlt, the simulator's ``senderAlt``). Whichever
arrives, a person is one chat: in the messages API, in the replies and their history, in the
deduplication of redeliveries and on the pages.
"""

from __future__ import annotations

import pytest

from bots.models import Direction, Message, MessageStatus
from tests.bots.test_pages import logged_in
from tests.helpers import assert_invalid, make_bot
from tests.hosting import connected, orm, step_until
from whatsapp.models import SimulatorInbound, SimulatorSent
from whatsapp.providers.simulator_events import inbound_of

PHONE_JID = "5511955554444@s.whatsapp.net"
LID = "198765432109876@lid"
GROUP = "120363025246125888@g.us"


def inbound_url(bot) -> str:
    return f"/api/bots/{bot.pk}/simulator/inbound"


def settled(bot, count: int):
    """``count`` inbound messages stored and each answered (or left) for good."""

    def check() -> bool:
        busy = [MessageStatus.RECEIVED, MessageStatus.REPLYING, MessageStatus.QUEUED, MessageStatus.SENDING]
        rows = Message.objects.filter(bot=bot)
        return rows.filter(direction=Direction.IN).count() == count and not rows.filter(status__in=busy).exists()

    return check


def delivered(bot):
    return lambda: not SimulatorInbound.objects.filter(bot_id=bot.pk, delivered_at=None).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_customer_by_lid_and_by_phone_is_one_conversation(shards, alice, alice_api, fake_gemini):
    shard, bot = await connected(shards, alice)
    post = orm(alice_api.post, inbound_url(bot), {"from": LID, "senderAlt": PHONE_JID, "text": "Oi, abrem hoje?"})
    first = await post
    assert first.status_code == 202, first.content
    await step_until(shard, settled(bot, 1))
    second = await orm(alice_api.post, inbound_url(bot), {"from": PHONE_JID, "text": "E tem pão de queijo?"})
    assert second.status_code == 202, second.content
    await step_until(shard, settled(bot, 2))
    # The first message again, now addressed by phone: a redelivery, stored once.
    again = {"from": PHONE_JID, "text": "Oi, abrem hoje?", "id": first.json()["id"]}
    assert (await orm(alice_api.post, inbound_url(bot), again)).status_code == 202
    await step_until(shard, delivered(bot))
    await step_until(shard, settled(bot, 2))

    listed = (await orm(alice_api.get, f"/api/bots/{bot.pk}/messages")).json()["messages"]
    assert {m["chat"] for m in listed} == {PHONE_JID}, "one chat, the phone JID"
    assert [m["text"] for m in listed if m["direction"] == "in"] == ["E tem pão de queijo?", "Oi, abrem hoje?"]
    assert {m["sender"] for m in listed if m["direction"] == "in"} == {PHONE_JID}
    by_chat = (await orm(alice_api.get, f"/api/bots/{bot.pk}/messages?chat=%2B5511955554444")).json()["messages"]
    assert len(by_chat) == 4, "both questions and both answers"
    assert (await orm(alice_api.get, f"/api/bots/{bot.pk}/messages?chat={LID}")).json()["messages"] == []
    # The replies went to the one chat, and the second was answered knowing the first.
    sent = await orm(lambda: list(SimulatorSent.objects.filter(bot_id=bot.pk).values_list("to", "text")))
    assert sent == [(PHONE_JID, "echo: Oi, abrem hoje?"), (PHONE_JID, "echo: E tem pão de queijo?")]
    assert fake_gemini.requests[-1].turns == [
        ("user", "Oi, abrem hoje?"),
        ("model", "echo: Oi, abrem hoje?"),
        ("user", "E tem pão de queijo?"),
    ]
    assert len(fake_gemini.requests) == 2, "the redelivery was not asked again"
    # The pages: one conversation in the list, with both messages in it.
    client = await orm(logged_in, alice)
    page = (await orm(client.get, f"/bots/{bot.pk}/")).content.decode()
    assert page.count(f"/chats/{PHONE_JID}/") == 1 and LID not in page
    conversation = (await orm(client.get, f"/bots/{bot.pk}/chats/{PHONE_JID}/")).content.decode()
    assert "Oi, abrem hoje?" in conversation and "E tem pão de queijo?" in conversation


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_customer_known_only_by_lid_is_a_lid_chat_the_bot_answers(shards, alice, alice_api, fake_gemini):
    shard, bot = await connected(shards, alice)

    response = await orm(alice_api.post, inbound_url(bot), {"from": LID, "text": "Oi"})
    assert response.status_code == 202, response.content
    await step_until(shard, settled(bot, 1))
    operator = await orm(alice_api.post, f"/api/bots/{bot.pk}/messages", {"to": LID, "text": "Posso ajudar?"})

    assert operator.status_code == 202, operator.content
    listed = (await orm(alice_api.get, f"/api/bots/{bot.pk}/messages?chat={LID}")).json()["messages"]
    assert {(m["chat"], m["direction"]) for m in listed} == {(LID, "in"), (LID, "out")}
    sent = await orm(lambda: list(SimulatorSent.objects.filter(bot_id=bot.pk).values_list("to", flat=True)))
    assert sent[0] == LID, "whatsmeow sends to a LID as it is"
    page = await orm((await orm(logged_in, alice)).get, f"/bots/{bot.pk}/chats/{LID}/")
    assert page.status_code == 200 and "Oi" in page.content.decode()


def test_it_takes_a_lid_sender_with_its_phone_jid(alice_api, alice):
    bot = make_bot(alice)

    direct = alice_api.post(inbound_url(bot), {"from": f" {LID}", "senderAlt": "+5511955554444", "text": "Oi"})
    in_group = alice_api.post(
        inbound_url(bot),
        {"from": "198765432109876:4@lid", "senderAlt": PHONE_JID, "chat": GROUP, "text": "@bot oi", "mentions": [LID]},
    )
    own = alice_api.post(inbound_url(bot), {"from": LID, "senderAlt": PHONE_JID, "fromMe": True, "text": "Já vou"})

    assert [r.status_code for r in (direct, in_group, own)] == [202, 202, 202]
    rows = SimulatorInbound.objects.order_by("id")
    assert [(r.chat, r.sender, r.sender_alt, r.from_me) for r in rows] == [
        (LID, LID, PHONE_JID, False),
        (GROUP, LID, PHONE_JID, False),
        (LID, LID, PHONE_JID, True),
    ]
    assert rows[1].mentions == [LID]
    # As the shard hands them over: the phone JID is the chat (the group stays the group).
    assert [(inbound_of(r).chat, inbound_of(r).sender) for r in rows] == [
        (PHONE_JID, PHONE_JID),
        (GROUP, PHONE_JID),
        (PHONE_JID, PHONE_JID),
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"from": PHONE_JID, "senderAlt": "5511900000000"}, id="from-is-a-phone"),
        pytest.param({"from": LID, "senderAlt": "203012345678901@lid"}, id="alt-is-a-lid"),
        pytest.param({"from": LID, "senderAlt": "ana"}, id="alt-is-no-number"),
        pytest.param({"from": LID, "senderAlt": GROUP}, id="alt-is-a-group"),
        pytest.param({"from": LID, "senderAlt": 5511955554444}, id="alt-is-a-number"),
    ],
)
def test_it_refuses_a_sender_alt_that_is_not_a_lids_phone(alice_api, alice, body):
    bot = make_bot(alice)

    error = assert_invalid(alice_api.post(inbound_url(bot), {**body, "text": "Oi"}), "senderAlt")

    assert "senderAlt" in error["fields"] and not SimulatorInbound.objects.exists()


@pytest.mark.parametrize("value", ["1234@lid", "@lid", "198765432109876@LID", "198765432109876@lid.example.com"])
def test_it_refuses_what_is_no_lid(alice_api, alice, value):
    bot = make_bot(alice)

    assert_invalid(alice_api.post(inbound_url(bot), {"from": value, "text": "Oi"}), "from")
