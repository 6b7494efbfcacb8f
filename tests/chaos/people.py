"""The people who write to the bots, and what reaches their phones.

They write through the simulator (rows for the hosting shard, as the web's
inbound endpoint writes them, or that endpoint itself) and read what the
simulated network delivered (SimulatorSent, or ``GET .../simulator/sent``).
The fake Gemini server answers "echo: <their text>", so each message has
exactly one expected answer, and a Counter of what arrived shows any
message left unanswered or answered twice.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.utils import timezone

from bots.models import Bot, Direction, Message, MessageStatus
from tests.processes import Web, wait_until
from whatsapp.models import SimulatorInbound, SimulatorSent

Received = collections.Counter  # (chat JID, text) -> how many times it arrived


def phone(n: int) -> str:
    return f"55119{n:08d}"


def chat_of(number: str) -> str:
    return f"{number}@s.whatsapp.net"


def write(bot: Bot, number: str, text: str) -> SimulatorInbound:
    """Someone writes to the bot (the row the web's inbound endpoint writes, as WhatsApp would deliver it)."""
    chat = chat_of(number)
    return SimulatorInbound(
        bot=bot,
        wa_id=f"3EB0{uuid.uuid4().hex[:16].upper()}",
        chat=chat,
        sender=chat,
        text=text,
        timestamp=timezone.now(),
    )


def write_many(rows: list[SimulatorInbound]) -> None:
    SimulatorInbound.objects.bulk_create(rows)


def answers_expected(rows: list[SimulatorInbound]) -> dict[uuid.UUID, Received]:
    """Per bot, the answer each message should get, once."""
    expected: dict[uuid.UUID, Received] = collections.defaultdict(Received)
    for row in rows:
        expected[row.bot_id][(row.chat, f"echo: {row.text}")] += 1
    return dict(expected)


def answers_received(bot_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Received]:
    received: dict[uuid.UUID, Received] = collections.defaultdict(Received)
    for bot_id, to, text in SimulatorSent.objects.filter(bot_id__in=bot_ids).values_list("bot_id", "to", "text"):
        received[bot_id][(to, text)] += 1
    return dict(received)


def settled(bot_ids: Iterable[uuid.UUID], count: int) -> bool:
    """All ``count`` inbound messages are stored and ended, and no reply is still waiting to be sent."""
    inbound = Message.objects.filter(bot_id__in=bot_ids, direction=Direction.IN)
    ended = inbound.filter(status__in=[MessageStatus.REPLIED, MessageStatus.IGNORED, MessageStatus.FAILED])
    unsent = Message.objects.filter(bot_id__in=bot_ids, direction=Direction.OUT).exclude(status=MessageStatus.SENT)
    return inbound.count() == count and ended.count() == count and not unsent.exists()


def wait_until_settled(bot_ids: Iterable[uuid.UUID], count: int, timeout: float, log: Callable[[], str]) -> None:
    """Until every message is ended and its reply sent; on a timeout, says where they are (and the log)."""

    def progress() -> str:
        statuses = collections.Counter(Message.objects.filter(bot_id__in=bot_ids).values_list("direction", "status"))
        return f"{count} messages written; stored and replies by status: {dict(statuses)}\n{log()}"

    try:
        wait_until(lambda: settled(bot_ids, count), timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"not settled in {timeout} s: {progress()}") from None


# --- through the API, as a script or the operator's tools would -----------------------------


@dataclass
class Conversations:
    """People writing to one bot through the simulator's API, and the answer each message should get, once."""

    web: Web
    token: str
    bot_id: str
    expected: Received = field(default_factory=Received)

    def write(self, n: int, text: str) -> None:
        """Person ``n`` writes ``text``; the fake Gemini's answer to it is expected once."""
        path = f"/api/bots/{self.bot_id}/simulator/inbound"
        status, _, body = self.web.request("POST", path, {"from": phone(n), "text": text}, self.token)
        assert status == 202, (status, body)
        self.expected[(chat_of(phone(n)), f"echo: {text}")] += 1

    def received(self) -> Received:
        status, _, body = self.web.request("GET", f"/api/bots/{self.bot_id}/simulator/sent", token=self.token)
        assert status == 200, (status, body)
        return Received((item["to"], item["text"]) for item in body["sent"])

    def wait_for_answers(self, timeout: float) -> None:
        """Until every expected answer arrived; then none may have arrived twice, and nothing else."""
        try:
            wait_until(lambda: self.received() >= self.expected, timeout=timeout, interval=0.25)
        except AssertionError:
            missing = self.expected - self.received()
            raise AssertionError(f"unanswered after {timeout:.0f} s: {dict(missing)}") from None
        assert self.received() == self.expected, "each message answered exactly once"


def healthz(web: Web) -> int:
    """What a load balancer or a monitor sees: 200 when healthy, 503 otherwise."""
    return web.request("GET", "/healthz")[0]
