"""Whom a request comes from, when the deployment's proxy (nginx: deploy/nginx.conf) relays it.

The proxy runs on the same host and names the client in one header (``PROXY_CLIENT_HEADER``,
``X-Forwarded-For`` by default), appending the address it saw to whatever the client sent: the
last address is the one it vouches for. A request from anywhere but loopback was not relayed by it.
"""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest

# Headers by which a proxy says whom it forwards for.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Client-IP", "True-Client-IP", "CF-Connecting-IP")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def relayed_for(request: HttpRequest, header: str) -> str | None:
    """The client that the proxy names in ``header``, for a request from loopback; None if it names none.

    "" when it names something that is not an address.
    """
    if not header or header not in request.headers or not is_loopback(request.META.get("REMOTE_ADDR", "")):
        return None
    try:
        return str(ipaddress.ip_address(request.headers[header].split(",")[-1].strip()))
    except ValueError:
        return ""
