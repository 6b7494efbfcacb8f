"""Structured logs: a shard's lines name the shard and the bot they are about (botplatform/logs.py)."""

from __future__ import annotations

import json
import logging
import uuid
from logging.config import DictConfigurator

import pytest
from django.utils import timezone

from botplatform import logs
from tests.hosting import paired
from tests.processes import start_pool, wait_until
from whatsapp.models import Session, SimulatorInbound


@pytest.fixture
def captured(settings):
    """The project's console handler, configured as LOG_FORMAT asks, writing into a list."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    def handler(log_format: str) -> logging.Handler:
        collect = Collect()
        collect.addFilter(logs.ContextFilter())
        spec = dict(settings.LOGGING["formatters"][log_format])
        collect.setFormatter(DictConfigurator({}).configure_formatter(spec))
        return collect

    logger = logging.getLogger("tests.logs")
    logger.setLevel(logging.INFO)
    made: list[logging.Handler] = []

    def attach(log_format: str) -> list[str]:
        made.append(handler(log_format))
        logger.addHandler(made[-1])
        return lines

    yield logger, attach
    for h in made:
        logger.removeHandler(h)
    logs.set_shard("")


def test_json_lines_carry_the_shard_and_the_bot_in_context(captured):
    logger, attach = captured
    lines = attach("json")
    bot_id = uuid.uuid4()
    logs.set_shard("host-1-abc")

    with logs.bot(bot_id):
        logger.warning("Gemini call failed")
    logger.info("shard started")
    logger.info("status changed", extra={"bot": "named-by-the-caller"})

    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "Gemini call failed"
    assert (first["level"], first["logger"]) == ("WARNING", "tests.logs")
    assert (first["shard"], first["bot"]) == ("host-1-abc", str(bot_id))
    assert "time" in first
    assert (second["shard"], second["bot"]) == ("host-1-abc", ""), "outside a bot's work, no bot"
    assert third["bot"] == "named-by-the-caller"


def test_text_lines_put_the_ids_before_the_message(captured):
    logger, attach = captured
    lines = attach("text")
    logs.set_shard("host-1-abc")

    with logs.bot("b1"):
        logger.info("connected")
    logs.set_shard("")
    logger.info("plain")

    assert lines[0].endswith("INFO tests.logs [shard=host-1-abc bot=b1] connected")
    assert lines[1].endswith("INFO tests.logs plain")


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_shard_names_the_bot_in_its_event_and_reply_lines(alice):
    """A pool with LOG_FORMAT=json: its connection and a failed Gemini call are logged with their bot and shard."""
    bot = paired(alice)
    # No Gemini server: the reply task logs its failure (and sends the fallback text).
    pool = start_pool(LOG_FORMAT="json")
    try:
        wait_until(lambda: Session.objects.get(pk=bot.pk).status == "connected", timeout=30)
        SimulatorInbound.objects.create(
            bot=bot,
            wa_id="3EBLOG",
            chat="5511900001111@s.whatsapp.net",
            sender="5511900001111@s.whatsapp.net",
            text="Oi",
            timestamp=timezone.now(),
        )

        def records() -> list[dict]:
            return [json.loads(line) for line in pool.log().splitlines() if line.startswith("{")]

        def about_the_bot() -> list[dict]:
            found = [r for r in records() if r.get("bot") == str(bot.pk)]
            return found if any(r["logger"] == "bots.gemini" for r in found) else []

        lines = wait_until(about_the_bot, timeout=30, message=f"no Gemini line for the bot:\n{pool.log()}")
        owner = Session.objects.get(pk=bot.pk).lease_owner
        assert {line["shard"] for line in lines} == {owner}
        assert any("connected" in line["message"] for line in lines if line["logger"] == "whatsapp.state")
    finally:
        pool.stop()
    assert all(line.startswith("{") for line in pool.log().splitlines() if line.strip()), "every line is JSON"
