"""QR codes for the pairing panel: a payload rendered as a PNG data URL."""

from __future__ import annotations

import base64
import io

import qrcode
from qrcode.constants import ERROR_CORRECT_L


def png_data_url(payload: str) -> str:
    """The payload as a scannable PNG (``data:image/png;base64,...``).

    Error correction L keeps WhatsApp's long payload at a size phones read
    easily; the quiet zone of 4 modules is what QR readers expect.
    """
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_L, box_size=6, border=4)
    code.add_data(payload)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image(fill_color="black", back_color="white").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
