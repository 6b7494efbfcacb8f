"""Google Gemini through the google-genai SDK: one client per process, async calls, a budget per reply.

What the SDK does and how it fails is in docs/gemini.md. In short: the SDK
retries 408/429/5xx, timeouts and connection errors itself (``HttpRetryOptions``),
but never reads the ``RetryInfo`` delay Google puts in a 429 body; blocked,
empty and cut-off answers come back as HTTP 200 with ``text`` None; transport
errors are not ``APIError`` and their type depends on the transport (aiohttp here,
see :func:`_build_client`).
:func:`generate` turns all of that into an :class:`Answer`: a text, or the
reason there is none (the caller then sends the bot's fallback text).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass

import aiohttp
from django.conf import settings
from google import genai
from google.genai import errors, types

logger = logging.getLogger(__name__)

# Explicit: google-genai 3.x defaults to "v1", where some fields arrive later than in v1beta.
API_VERSION = "v1beta"
RETRY_ATTEMPTS = 3
RETRY_INITIAL_DELAY = 0.5
RETRY_MAX_DELAY = 4.0
RETRY_JITTER = 0.5  # seconds of randomness added to each delay (the SDK's default is 1)
RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]
# A server's RetryInfo delay is waited only if this much of the budget is left for the call after it.
MIN_CALL_SECONDS = 1.0
# Finish reasons that come with a complete answer; any other (SAFETY, MAX_TOKENS, ...) gets the fallback.
COMPLETE = {None, types.FinishReason.STOP, types.FinishReason.FINISH_REASON_UNSPECIFIED}

Turn = tuple[str, str]  # (role, text), role "user" or "model"


@dataclass(frozen=True)
class Answer:
    """What came of one reply: its text, or None and the reason (the fallback is then sent)."""

    text: str | None
    reason: str = ""
    latency_ms: int = 0


_client: genai.Client | None = None
_client_key: tuple | None = None
_client_lock = threading.Lock()


def client() -> genai.Client:
    """The process's one client, built on first use (it takes ~50 ms: SSL contexts, pools).

    Rebuilt only if the settings it is made from change, which happens in tests.
    """
    global _client, _client_key
    key = (
        settings.GEMINI_API_KEY,
        settings.GEMINI_BASE_URL,
        settings.GEMINI_REQUEST_TIMEOUT,
        RETRY_ATTEMPTS,
        RETRY_INITIAL_DELAY,
        RETRY_MAX_DELAY,
        RETRY_JITTER,
    )
    with _client_lock:
        if _client is None or _client_key != key:
            _client, _client_key = _build_client(), key
        return _client


def _build_client() -> genai.Client:
    if not settings.GEMINI_API_KEY:
        raise RuntimeError("GEMINI_API_KEY is not set")
    # The async calls go through aiohttp (installed by the ``google-genai[aiohttp]`` extra, which the
    # SDK then prefers): its connector keeps one idle connection per call that was in flight and
    # reuses them at no cost, where httpx2's pool probes every idle connection on every request
    # (with 200 calls in flight, 2-3 ms of CPU per call: benchmarks/gemini_floor.py).
    return genai.Client(
        api_key=settings.GEMINI_API_KEY,
        http_options=types.HttpOptions(
            base_url=settings.GEMINI_BASE_URL or None,
            api_version=API_VERSION,
            timeout=round(settings.GEMINI_REQUEST_TIMEOUT * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(
                attempts=RETRY_ATTEMPTS,
                initial_delay=RETRY_INITIAL_DELAY,
                max_delay=RETRY_MAX_DELAY,
                jitter=RETRY_JITTER,
                http_status_codes=RETRY_STATUS_CODES,
            ),
        ),
    )


def contents(turns: list[Turn]) -> list[dict]:
    # Plain dicts: the SDK validates them into its models once; building the models here first costs twice that.
    return [{"role": role, "parts": [{"text": text}]} for role, text in turns]


async def generate(
    *, model: str, system_prompt: str, temperature: float, turns: list[Turn], budget: float | None = None
) -> Answer:
    """Ask Gemini for the next model turn, within ``budget`` seconds (GEMINI_REPLY_DEADLINE), retries included."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + (settings.GEMINI_REPLY_DEADLINE if budget is None else budget)

    def answer(text: str | None, reason: str = "") -> Answer:
        return Answer(text, reason[:500], round((loop.time() - started) * 1000))

    try:
        aio = client().aio
    except Exception as exc:
        logger.error("Gemini client unavailable: %s", exc)
        return answer(None, f"client: {exc}")
    config = types.GenerateContentConfig(
        system_instruction=system_prompt or None,
        temperature=temperature,
        # No tools are declared: skip the SDK's function-calling loop (and its log line per call).
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    request = {"model": model, "contents": contents(turns), "config": config}
    hinted, timeouts = False, 0
    while True:
        try:
            response = await asyncio.wait_for(aio.models.generate_content(**request), deadline - loop.time())
        except errors.APIError as exc:
            delay = retry_delay(exc)
            if (
                exc.code == 429
                and not hinted
                and delay is not None
                and delay <= deadline - loop.time() - MIN_CALL_SECONDS
            ):
                # The SDK retried on its own schedule; the server said when quota returns, and it fits.
                hinted = True
                logger.info("Gemini 429: waiting the %.1f s the server asked for", delay)
                await asyncio.sleep(delay)
                continue
            logger.warning("Gemini %s %s for %s: %s", exc.code, exc.status, model, exc.message)
            return answer(None, f"gemini {exc.code} {exc.status or ''}".strip())
        except TimeoutError:
            if loop.time() >= deadline:
                return answer(None, "deadline: no answer in time")
            # The request's own timeout. The SDK retries httpx2's timeouts but not aiohttp's: retry here.
            timeouts += 1
            pause = min(RETRY_MAX_DELAY, RETRY_INITIAL_DELAY * 2 ** (timeouts - 1))
            if timeouts < RETRY_ATTEMPTS and pause < deadline - loop.time():
                logger.info("Gemini request timed out for %s; trying again in %.1f s", model, pause)
                await asyncio.sleep(pause)
                continue
            logger.warning("Gemini requests timed out %d times for %s", timeouts, model)
            return answer(None, "timeout")
        except Exception as exc:
            logger.warning("Gemini call failed for %s: %r", model, exc)
            return answer(None, failure_reason(exc))
        text, reason = read(response)
        if text is None:
            logger.warning("Gemini gave no usable answer for %s: %s", model, reason)
        return answer(text, reason)


def failure_reason(exc: Exception) -> str:
    """What the operator reads for a call that got no HTTP answer (aiohttp's errors, in plain words)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the server"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def read(response: types.GenerateContentResponse) -> tuple[str | None, str]:
    """The answer's text, or None and why: blocked, cut off or empty answers all come as HTTP 200."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        return None, f"prompt blocked: {_name(feedback.block_reason)}"
    if not response.candidates:
        return None, "no candidates"
    finish = response.candidates[0].finish_reason
    if finish not in COMPLETE:
        return None, f"finish reason {_name(finish)}"
    text = response.text
    if text is None or not text.strip():
        return None, "empty answer"
    return text.strip(), ""


def _name(value) -> str:
    return getattr(value, "value", None) or str(value)


DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")


def retry_delay(exc: errors.APIError) -> float | None:
    """Seconds from the ``google.rpc.RetryInfo`` of an error body (e.g. ``"37.5s"``), if any."""
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
