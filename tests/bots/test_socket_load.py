"""The live sockets of a real daphne under a burst: one user cannot take the web down for everyone.

A logged-in user opens 1,000 page sockets at once (a loop of reconnecting tabs, a
script gone wrong). Each gets its first frame, or, over the per-user cap, is
closed with 4429 at once. After they close, nothing of them is left running, the
web process is idle again, and another user's new socket is answered at once.
Bounded in count and time, on loopback only.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request

import pytest
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import make_bot, make_user
from tests.processes import Web

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes, pytest.mark.timeout(240)]

BURST = 1000
CAP = 100  # WEBSOCKETS_PER_USER's default


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def first_frame(web: Web, path: str, cookie: str, timeout: float) -> tuple[str, float, object]:
    """What a socket gets first: ("frame", seconds, socket) or ("closed", seconds, code)."""
    started = time.monotonic()
    try:
        ws = await connect(
            web.ws_base + path, origin=web.base, additional_headers={"Cookie": cookie}, open_timeout=timeout
        )
    except Exception as exc:
        return "failed", time.monotonic() - started, f"{exc!r} from {exc.__cause__!r}"
    try:
        await asyncio.wait_for(ws.recv(), timeout)
        return "frame", time.monotonic() - started, ws
    except ConnectionClosed as closed:
        return "closed", time.monotonic() - started, closed.rcvd.code if closed.rcvd else repr(closed)
    except TimeoutError:
        await ws.close()
        return "silent", time.monotonic() - started, None


def metrics(web: Web) -> dict[str, float]:
    with urllib.request.urlopen(web.base + "/metrics", timeout=15) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in re.findall(r"^(web_\w+) (\S+)$", text, re.M)}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_burst_of_a_thousand_sockets_from_one_user_leaves_the_web_fit_for_everyone(web, alice):
    bot = make_bot(alice)
    carol = make_user("carol")
    theirs = make_bot(carol)
    asyncio.run(
        burst(
            web, f"/ws/bots/{bot.pk}/live", session_cookie(alice), f"/ws/bots/{theirs.pk}/live", session_cookie(carol)
        )
    )


async def burst(web: Web, path: str, cookie: str, other_path: str, other_cookie: str) -> None:
    baseline = metrics(web)

    results = await asyncio.gather(*(first_frame(web, path, cookie, timeout=20) for _ in range(BURST)))

    kinds = [kind for kind, _, _ in results]
    outcomes = {kind: kinds.count(kind) for kind in set(kinds)}
    assert outcomes == {"frame": CAP, "closed": BURST - CAP}, (
        outcomes,
        [r for r in results if r[0] not in ("frame", "closed")][:3],
    )
    refused = [(seconds, code) for kind, seconds, code in results if kind == "closed"]
    codes = [code for _, code in refused]
    assert codes == [4429] * (BURST - CAP), {code: codes.count(code) for code in set(codes)}
    assert max(seconds for kind, seconds, _ in results if kind == "frame") < 20, "each its first frame within 20 s"
    assert metrics(web)["web_sockets_open"] == CAP

    await asyncio.gather(*(ws.close() for kind, _, ws in results if kind == "frame"))
    await asyncio.sleep(15)

    kind, seconds, ws = await first_frame(web, other_path, other_cookie, timeout=5)
    assert kind == "frame" and seconds < 1, (kind, seconds)
    await ws.close()
    await asyncio.sleep(1)
    after = metrics(web)
    assert after["web_sockets_open"] == 0
    assert after["web_socket_consumers"] == 0, "no consumer is left running without its socket"
    assert after["web_asyncio_tasks"] <= baseline["web_asyncio_tasks"] + 2, (baseline, after)
    before = cpu_seconds(web.proc.pid)
    await asyncio.sleep(5)
    assert (cpu_seconds(web.proc.pid) - before) / 5 < 0.10, "the web process is idle again"
