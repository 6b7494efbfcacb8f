"""Proxies for neonize's dials: what WHATSAPP_PROXY and a bot's ``proxy`` accept; their passwords out of text.

whatsmeow's ``SetProxyAddress`` (client.go) takes ``http://`` and ``https://`` (an HTTP CONNECT
proxy) and ``socks5://`` (golang.org/x/net/proxy, with ``user:password@`` as its auth); any other
scheme is an error at connect time. The rules here are stricter than Go's parser, so that a URL
accepted is one Go parses, with a host and an explicit port.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

SCHEMES = ("http", "https", "socks5")
# RFC 3986 userinfo characters, or a percent escape (a bare % is refused by Go's url.Parse).
_USER_CHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})"
_USERINFO = _USER_CHAR + r"+(?::" + _USER_CHAR + r"*)?@"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = r"(?:" + _LABEL + r"(?:\." + _LABEL + r")*|\[[0-9A-Fa-f:.]{2,45}\])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL = r"(?:https?|socks5)://(?:" + _USERINFO + r")?" + _HOST + r":" + _PORT + r"/?"
MAX_LENGTH = 500
EXAMPLES = ["socks5://user:password@proxy.example.com:1080", "http://10.0.0.5:3128", ""]

_URL = re.compile(URL)


def proxy_url(value: str) -> str:
    """A bot's proxy as stored: stripped, "" for none; ValueError for anything else."""
    value = value.strip()
    if value and not _URL.fullmatch(value):
        raise ValueError(
            "Expected http://, https:// or socks5:// then host:port, e.g. socks5://user:password@proxy.example.com:1080."
        )
    return value


def masked(text: str, proxy: str) -> str:
    """``text`` without the proxy's password: an error from Go may quote the proxy's URL."""
    try:
        password = urlsplit(proxy).password if proxy else None
    except ValueError:
        password = None
    for secret in {password or "", unquote(password or "")}:
        if len(secret) >= 3:  # shorter, masking it would garble the text and hide little
            text = text.replace(secret, "***")
    return text
