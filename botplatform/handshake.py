"""What every WebSocket handshake passes before a consumer: its route, then its Origin (docs/api.md).

- A path with no route, or an id that is not a UUID, is answered HTTP 404 at
  the handshake (Channels' router raises, which daphne turns into a 500); a
  NUL character in the path or the query, HTTP 400.
- The Origin must be the request's own (scheme, host and port; the scheme from
  ``X-Forwarded-Proto`` when Django trusts it, as ``request.is_secure()`` does),
  or one of ``CSRF_TRUSTED_ORIGINS``, and the host one of ``ALLOWED_HOSTS``; else
  HTTP 403. Channels' ``AllowedHostsOriginValidator`` compares host names only,
  so a page served on another port of the same host passed.

A refusal uses the ASGI denial response (``websocket.http.response.*``) where the
server offers it; daphne 4.2 does not, so :func:`teach_daphne_denial_responses`
adds it to daphne's WebSocket protocol when the application is loaded by daphne.
"""

from __future__ import annotations

import http
import sys
from urllib.parse import parse_qsl, urlsplit

from autobahn.websocket import ConnectionDeny
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from botplatform.guards import holds_nul

DENIAL = "websocket.http.response"
DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def request_scheme(scope) -> str:
    """``https`` when the socket is TLS, or the proxy says so and Django is told to trust it."""
    if scope.get("scheme") == "wss":
        return "https"
    trusted = settings.SECURE_PROXY_SSL_HEADER
    if trusted:
        header, value = trusted
        name = header.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")
        if (_header(scope, name) or "").split(",")[0].strip() == value:
            return "https"
    return "http"


def origin_allowed(scope) -> bool:
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    given = _origin(origin)
    if given is None:
        return False
    if given == _origin(f"{request_scheme(scope)}://{host}"):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        scheme, _, netloc = trusted.partition("://")
        if "*" in netloc:
            # Django's wildcard subdomains, as CsrfViewMiddleware reads them.
            if scheme == given[0] and is_same_domain(f"{given[1]}:{given[2]}" if ":" in netloc else given[1], netloc):
                return True
        elif _origin(trusted) == given:
            return True
    return False


class Handshake:
    """The WebSocket side of the ASGI application: a route and an Origin checked, then the consumers."""

    def __init__(self, router, inner) -> None:
        self.router = router  # the URLRouter, to look a path up in
        self.inner = inner  # what handles the socket: the router inside its middleware

    def has_route(self, scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and not path.startswith(root):
            return False
        path = path[len(root) :].lstrip("/")
        return any(route.pattern.match(path) for route in self.router.routes)

    async def __call__(self, scope, receive, send) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if holds_nul(scope.get("path", ""), query):
            await deny(scope, receive, send, http.HTTPStatus.BAD_REQUEST)
        elif not self.has_route(scope):
            await deny(scope, receive, send, http.HTTPStatus.NOT_FOUND)
        elif not origin_allowed(scope):
            await deny(scope, receive, send, http.HTTPStatus.FORBIDDEN)
        else:
            await self.inner(scope, receive, send)


async def deny(scope, receive, send, status: http.HTTPStatus) -> None:
    """Refuse the handshake with an HTTP status (a server without the extension answers 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if DENIAL not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    body = f"{status.value} {status.phrase}\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": status.value, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def teach_daphne_denial_responses() -> None:
    """In a daphne process: give its WebSocket protocol the ASGI denial response, and say so in the scope.

    daphne (4.2.3, pinned) answers a refused handshake only with 403. Autobahn,
    under it, can answer any status (``ConnectionDeny``): the response start
    sets the status, the last body part sends it. Nothing else changes. Only
    where daphne is already loaded: importing daphne.server installs Twisted's
    reactor, which no other process wants.
    """
    server, protocol = sys.modules.get("daphne.server"), sys.modules.get("daphne.ws_protocol")
    if server is None or protocol is None:
        return
    Server, WebSocketProtocol = server.Server, protocol.WebSocketProtocol
    if getattr(WebSocketProtocol, "denial_responses", False):
        return
    create_application = Server.create_application
    handle_reply = WebSocketProtocol.handle_reply

    def create_with_extension(self, protocol, scope):
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[DENIAL] = {}
        return create_application(self, protocol, scope)

    def handle_denial(self, message):
        kind = message.get("type")
        if kind == "websocket.http.response.start" and self.state == self.STATE_CONNECTING:
            self.denial_status = message["status"]
        elif kind == "websocket.http.response.body" and self.state == self.STATE_CONNECTING:
            if not message.get("more_body") and hasattr(self, "handshake_deferred"):
                status = getattr(self, "denial_status", 403)
                self.handshake_deferred.errback(ConnectionDeny(code=status, reason=http.HTTPStatus(status).phrase))
                del self.handshake_deferred
                self.server.protocol_disconnected(self)
        else:
            handle_reply(self, message)

    Server.create_application = create_with_extension
    WebSocketProtocol.handle_reply = handle_denial
    WebSocketProtocol.denial_responses = True
