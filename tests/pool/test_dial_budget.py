"""What a shard does before and while a neonize client dials: the owner's dial budget, the bot's proxy,
and the watchdog on a client that says nothing.

The dials are a stand-in provider's (named neonize: the budget counts neonize's only); what the
operator sees is read from the session rows, as the API shows them.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from bots.models import Bot, Dial
from pool import connection
from tests.hosting import POLL, orm, session_row, step_until, wanting
from whatsapp.models import Status
from whatsapp.providers.base import Client, Device, Events, NotConnected, Provider
from whatsapp.providers.simulator import SimulatorProvider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


class StandInClient(Client):
    async def start(self) -> None:
        self.provider.dials.append(self.bot_id)
        if self.provider.connects:
            self.events.connected(self.bot_id)

    async def stop(self) -> None:
        self.provider.stopped.append(self.bot_id)

    async def logout(self) -> None:
        pass

    async def send_text(self, to: str, text: str, commit=None, ref: str = "") -> str:
        raise NotConnected("not connected")


class StandIn(Provider):
    """neonize as the shard sees it: a client per start; connected at once, or never a word."""

    name = "neonize"

    def __init__(self, *, connects: bool = True) -> None:
        self.connects = connects
        self.dials: list = []
        self.stopped: list = []
        self.devices: list[Device] = []

    def client(self, device: Device, events: Events) -> StandInClient:
        self.devices.append(device)
        client = StandInClient(device, events)
        client.provider = self
        return client


def neonize_bot(owner, **fields) -> Bot:
    bot = wanting(owner)
    Bot.objects.filter(pk=bot.pk).update(whatsapp_provider="neonize", **fields)
    return bot


async def hosting(shards, neonize: StandIn):
    shard = await shards(setup=False)
    shard.providers = {"neonize": neonize, "simulator": SimulatorProvider(shard.db, poll_interval=POLL)}
    await shard.setup()
    return shard


async def test_an_owner_over_the_dial_budget_waits_while_other_owners_dial(shards, alice, bob, settings):
    settings.WHATSAPP_DIAL_RATE_USER = (2, 3)  # 2 dials per owner in 3 s
    neonize = StandIn()
    shard = await hosting(shards, neonize)
    first, second, third = [await orm(neonize_bot, alice) for _ in range(3)]
    bobs = await orm(neonize_bot, bob)
    simulated = await orm(wanting, alice)

    def settled() -> bool:
        rows = [session_row(bot) for bot in (first, second, third, bobs)]
        return sum(row.status == Status.CONNECTED for row in rows) == 3 and any(
            row.last_error == "dial_budget" for row in rows
        )

    await step_until(shard, settled)

    held = [bot for bot in (first, second, third) if (await orm(session_row, bot)).last_error == "dial_budget"]
    assert len(held) == 1, "alice's third dial waits"
    waiting = await orm(session_row, held[0])
    assert waiting.status == Status.CONNECTING and waiting.failures == 0, "not a failure: a wait"
    assert timezone.now() < waiting.next_retry_at <= timezone.now() + timezone.timedelta(seconds=3.5)
    assert (await orm(session_row, bobs)).status == Status.CONNECTED, "bob's bot dials all the same"
    await step_until(shard, lambda: session_row(simulated).status == Status.QR_REQUIRED)
    assert neonize.dials.count(held[0].pk) == 0

    # Once alice's first dials leave the window, the waiting bot dials.
    await step_until(shard, lambda: session_row(held[0]).status == Status.CONNECTED, timeout=8)

    assert (await orm(session_row, held[0])).last_error == ""
    assert neonize.dials.count(held[0].pk) == 1
    assert await orm(lambda: Dial.objects.filter(user=alice).count()) <= 3, "simulator bots are not counted"
    assert await orm(lambda: Dial.objects.filter(user=bob).count()) == 1


async def test_a_neonize_client_is_given_the_bots_own_proxy(shards, alice):
    neonize = StandIn()
    shard = await hosting(shards, neonize)
    own = await orm(neonize_bot, alice, proxy="socks5://maria:s3cret@proxy.example.com:1080")
    default = await orm(neonize_bot, alice)

    await step_until(shard, lambda: session_row(own).status == session_row(default).status == Status.CONNECTED)

    proxies = {device.bot_id: device.proxy for device in neonize.devices}
    assert proxies == {own.pk: "socks5://maria:s3cret@proxy.example.com:1080", default.pk: ""}
    assert "s3cret" not in repr(neonize.devices), "a device's repr never shows the password"


async def test_a_started_client_that_says_nothing_fails_its_attempt_after_the_watchdog(shards, alice, monkeypatch):
    monkeypatch.setattr(connection, "START_WATCHDOG", 0.3)
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 60.0)
    neonize = StandIn(connects=False)  # an outdated client in the QR loop: no event reaches Python
    shard = await hosting(shards, neonize)
    bot = await orm(neonize_bot, alice)
    simulated = await orm(wanting, alice)

    await step_until(shard, lambda: session_row(bot).last_error.startswith("no_response"))

    session = await orm(session_row, bot)
    assert (session.status, session.failures) == (Status.CONNECTING, 1), "retried later, as a failed dial"
    assert session.next_retry_at is not None and session.desired_connected
    assert neonize.stopped == [bot.pk], "its client is stopped"
    # A client that shows a QR is past the watchdog: the QR's own deadline applies.
    await step_until(shard, lambda: session_row(simulated).status == Status.QR_REQUIRED)
    for _ in range(10):
        await shard.step()
    assert (await orm(session_row, simulated)).status == Status.QR_REQUIRED
