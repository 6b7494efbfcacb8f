"""The real google-genai SDK against the fake Gemini server: what goes on the wire, and what comes of failures.

No database: bots.gemini only talks HTTP. Each test scripts the server's next
answers and looks at what the reply would be (a text, or None and the reason
the fallback is sent) and at the requests the server received.
"""

from __future__ import annotations

import threading

import pytest

from bots import gemini
from tests.fake_gemini import FakeGemini, empty_stop, error, held, max_tokens, prompt_blocked, safety_stop, slow

pytestmark = pytest.mark.timeout(30)

CONVERSATION = [
    ("user", "Oi, vocês abrem hoje?"),
    ("model", "Abrimos das 7h às 19h."),
    ("user", "Tem pão de queijo?"),
]


async def ask(**overrides) -> gemini.Answer:
    request = {
        "model": "gemini-2.5-flash",
        "system_prompt": "Você é a atendente da Padaria Pão Quente.",
        "temperature": 0.4,
        "turns": CONVERSATION,
    }
    return await gemini.generate(**(request | overrides))


async def test_it_sends_the_persona_history_model_and_temperature_as_gemini_expects(fake_gemini):
    answer = await ask()

    assert (answer.text, answer.reason) == ("echo: Tem pão de queijo?", "")
    assert answer.latency_ms >= 0
    (request,) = fake_gemini.requests
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "test-key"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-server-timeout"] == "12"  # GEMINI_REQUEST_TIMEOUT, whole seconds
    assert request.body["systemInstruction"] == {
        "parts": [{"text": "Você é a atendente da Padaria Pão Quente."}],
        "role": "user",
    }
    assert request.body["contents"] == [
        {"role": "user", "parts": [{"text": "Oi, vocês abrem hoje?"}]},
        {"role": "model", "parts": [{"text": "Abrimos das 7h às 19h."}]},
        {"role": "user", "parts": [{"text": "Tem pão de queijo?"}]},
    ]
    assert request.body["generationConfig"] == {"temperature": 0.4}
    assert set(request.body) == {"contents", "systemInstruction", "generationConfig"}


async def test_it_leaves_out_an_empty_persona(fake_gemini):
    await ask(system_prompt="")

    assert "systemInstruction" not in fake_gemini.requests[0].body


async def test_it_uses_one_client_per_process(fake_gemini):
    await ask()
    await ask()

    assert gemini.client() is gemini.client()
    assert len(fake_gemini.requests) == 2


async def test_it_retries_a_429_then_answers(fake_gemini):
    fake_gemini.script(error(429))

    answer = await ask()

    assert answer.text == "echo: Tem pão de queijo?"
    assert len(fake_gemini.requests) == 2


async def test_it_gives_up_on_a_persistent_500_after_three_attempts(fake_gemini):
    fake_gemini.script(error(500), error(500), error(500))

    answer = await ask()

    assert (answer.text, answer.reason) == (None, "gemini 500 INTERNAL")
    assert len(fake_gemini.requests) == 3


async def test_it_does_not_retry_what_retrying_cannot_fix(fake_gemini):
    fake_gemini.script(error(400, "Invalid model"))

    answer = await ask()

    assert (answer.text, answer.reason) == (None, "gemini 400 INVALID_ARGUMENT")
    assert len(fake_gemini.requests) == 1


async def test_it_times_out_each_request_and_retries(fake_gemini, settings):
    settings.GEMINI_REQUEST_TIMEOUT = 0.2
    fake_gemini.script(slow(1), slow(1))

    answer = await ask()

    assert answer.text == "echo: Tem pão de queijo?"
    assert len(fake_gemini.requests) == 3


async def test_it_stops_at_the_reply_deadline_whatever_is_left_to_try(fake_gemini):
    gate = threading.Event()
    fake_gemini.script(held(gate))
    try:
        answer = await ask(budget=0.3)
    finally:
        gate.set()

    assert (answer.text, answer.reason) == (None, "deadline: no answer in time")
    assert 300 <= answer.latency_ms < 2000
    assert len(fake_gemini.requests) == 1


async def test_it_waits_the_delay_a_429_asks_for_when_it_fits_the_budget(fake_gemini):
    quota = error(429, retry_delay="0.3s")
    fake_gemini.script(quota, quota, quota)

    answer = await ask(budget=5)

    assert answer.text == "echo: Tem pão de queijo?"
    assert len(fake_gemini.requests) == 4
    # The fourth came only after the delay the server asked for.
    assert fake_gemini.requests[3].at - fake_gemini.requests[2].at >= 0.3


async def test_it_does_not_wait_a_429_delay_longer_than_the_budget(fake_gemini):
    quota = error(429, retry_delay="30s")
    fake_gemini.script(quota, quota, quota)

    answer = await ask(budget=5)

    assert (answer.text, answer.reason) == (None, "gemini 429 RESOURCE_EXHAUSTED")
    assert len(fake_gemini.requests) == 3
    assert answer.latency_ms < 5000


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(prompt_blocked(), "prompt blocked: SAFETY", id="prompt-blocked"),
        pytest.param(safety_stop(), "finish reason SAFETY", id="safety"),
        pytest.param(empty_stop(), "empty answer", id="empty"),
        pytest.param(max_tokens(), "finish reason MAX_TOKENS", id="max-tokens"),
    ],
)
async def test_it_reports_answers_that_cannot_be_sent(fake_gemini, response, reason):
    fake_gemini.script(response)

    answer = await ask()

    assert (answer.text, answer.reason) == (None, reason)
    assert len(fake_gemini.requests) == 1, "an HTTP 200 is not retried"


async def test_it_reports_a_server_that_cannot_be_reached(fake_gemini, settings):
    with FakeGemini() as fake:
        settings.GEMINI_BASE_URL = fake.url
    # Stopped: nothing listens on its port anymore.

    answer = await ask(budget=5)

    assert answer.text is None
    assert answer.reason.startswith("connection failed: "), answer.reason


async def test_it_reports_a_wrong_api_key(fake_gemini, settings):
    settings.GEMINI_API_KEY = "not-the-key"

    answer = await ask()

    assert (answer.text, answer.reason) == (None, "gemini 400 INVALID_ARGUMENT")


async def test_it_answers_with_a_reason_when_no_api_key_is_set(fake_gemini, settings):
    settings.GEMINI_API_KEY = None

    answer = await ask()

    assert (answer.text, answer.reason) == (None, "client: GEMINI_API_KEY is not set")
    assert fake_gemini.requests == []


def test_it_reads_the_retry_delay_of_a_429():
    body = error(429, retry_delay="37.5s").body

    assert gemini.retry_delay(gemini.errors.ClientError(429, body)) == 37.5
    assert gemini.retry_delay(gemini.errors.ClientError(429, error(429).body)) is None
    assert gemini.retry_delay(gemini.errors.ClientError(429, {"error": {"details": "junk"}})) is None
