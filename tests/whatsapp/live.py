"""Helpers for tests that drive the real web and pool processes."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import zxingcpp
from PIL import Image
from websockets.sync.client import connect

from tests.processes import Web, wait_until

# whatsmeow's QR payload today (pair.go, makeQRData): a wa.me link, the server's ref, three keys, a client type.
QR_PAYLOAD = re.compile(
    r"^https://wa\.me/settings/linked_devices#2@[A-Za-z0-9+/=]+,[A-Za-z0-9+/=]{44},[A-Za-z0-9+/=]{44},"
    r"[A-Za-z0-9+/=]{44},[0-9]+$"
)


def decode_qr(data_url: str) -> str:
    """Read a QR data URL back with a real decoder, as a phone camera would."""
    assert data_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    results = zxingcpp.read_barcodes(image)
    assert len(results) == 1, "expected exactly one QR code in the image"
    return results[0].text


class Frames:
    """The frames of one connection-events WebSocket, read with deadlines."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[dict] = []

    def next(self, timeout: float = 15.0) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.seen.append(frame)
        return frame

    def until(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame in {timeout} s; saw {[f['event'] for f in self.seen]}")
            try:
                frame = self.next(timeout=remaining)
            except TimeoutError:
                continue
            if predicate(frame):
                return frame

    def events(self) -> list[str]:
        return [frame["event"] for frame in self.seen]


def open_events(
    web: Web, bot_id: str, token: str | None = None, origin: str | None = None, headers: dict | None = None
):
    extra = dict(headers or {})
    if token:
        extra["Authorization"] = f"Bearer {token}"
    return connect(
        f"{web.ws_base}/api/bots/{bot_id}/connection-events",
        origin=origin or web.base,
        additional_headers=extra,
        open_timeout=10,
    )


def create_bot(web: Web, token: str, **fields) -> dict:
    status, _, bot = web.request(
        "POST", "/api/bots", {"name": "Loja", "whatsappProvider": "simulator", **fields}, token
    )
    assert status == 201, bot
    return bot


def pair(web: Web, token: str, bot_id: str, frames: Frames, phone: str = "5511987654321") -> dict:
    """Scan the QR the bot shows, as the phone would, and wait for `connected`."""
    qr = frames.until(lambda f: bool(f.get("qrCode")))
    payload = decode_qr(qr["qrCode"])
    status, _, body = web.request(
        "POST", f"/api/bots/{bot_id}/simulator/scan", {"qr": payload, "phone": phone, "pushName": "Loja"}, token
    )
    assert status == 202, body
    return frames.until(lambda f: f["event"] == "connected")


def status_of(web: Web, token: str, bot_id: str) -> dict:
    status, _, body = web.request("GET", f"/api/bots/{bot_id}/whatsapp-status", token=token)
    assert status == 200, body
    return body


def wait_for_status(web: Web, token: str, bot_id: str, wanted: str, timeout: float = 20.0) -> dict:
    return wait_until(
        lambda: (s := status_of(web, token, bot_id))["status"] == wanted and s,
        timeout=timeout,
        interval=0.1,
        message=f"bot {bot_id} never became {wanted}",
    )
