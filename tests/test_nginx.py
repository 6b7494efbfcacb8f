"""The production edge: deploy/nginx.conf run by a real nginx in front of a real daphne (README, "Production").

The committed site config is rendered with this test's values (its ports, a STATIC_ROOT filled by
collectstatic in a temporary folder, a 2 s header timeout) and wrapped in a minimal main config
whose temporary and log paths are in the test's folder, then run as
``nginx -p <tmp> -c <tmp>/nginx.conf -g 'daemon off; pid <tmp>/nginx.pid; error_log stderr;'``
on a free loopback port. daphne is the tests' own (tests.processes.start_web, the deployed arguments).

Without nginx (``apt-get install nginx-light``) these tests skip and say why; in CI (``CI=true``)
they fail instead, and .ci/run installs it when it is missing.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import re
import select
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.test import override_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from bots.models import ApiToken
from tests.helpers import make_bot, make_user
from tests.processes import ROOT, Proc, Web, free_port, start_web, wait_listening, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

SITE_CONF = ROOT / "deploy" / "nginx.conf"
HEADER_TIMEOUT = 2  # seconds; deploy/nginx.conf says 10
TOO_LARGE = {
    "error": {"code": "payload_too_large", "message": "The request body is larger than 1048576 bytes."},
}
# The example values of deploy/nginx.conf that this test replaces; each must be found there.
LISTEN = "    listen 80;\n    listen [::]:80;\n"
UPSTREAM = "server 127.0.0.1:8000;"
STATIC_ROOT = "/srv/bots/staticfiles/"
HEADER_TIMEOUT_LINE = "client_header_timeout 10s;"


def nginx_binary() -> str | None:
    for candidate in (os.environ.get("NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        reason = "nginx is not installed: apt-get install nginx-light (see README, Tests)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI runs the nginx tests: .ci/run installs nginx-light.")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    """collectstatic with the production storage (hashed names, .gz beside them) into a temporary STATIC_ROOT."""
    root = tmp_path_factory.mktemp("staticfiles")
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "botplatform.storage.StaticFilesStorage"},
    }
    with override_settings(STATIC_ROOT=root, STORAGES=storages):
        call_command("collectstatic", interactive=False, verbosity=0)
    assert (root / "staticfiles.json").exists() and (root / "css" / "app.css").exists()
    return root


def render_site(*, port: int, upstream: int, static_root: Path, tls: tuple[int, Path, Path] | None = None) -> str:
    """deploy/nginx.conf with this test's values in place of its examples (each must be there)."""
    text = SITE_CONF.read_text()
    listen = f"    listen 127.0.0.1:{port};\n"
    if tls:
        # What `certbot --nginx` adds to the server block.
        tls_port, cert, key = tls
        listen += f"    listen 127.0.0.1:{tls_port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
    for example, value in [
        (LISTEN, listen),
        (UPSTREAM, f"server 127.0.0.1:{upstream};"),
        (STATIC_ROOT, f"{static_root}/"),
        (HEADER_TIMEOUT_LINE, f"client_header_timeout {HEADER_TIMEOUT}s;"),
    ]:
        assert example in text, f"deploy/nginx.conf no longer has {example!r}: update tests/test_nginx.py"
        text = text.replace(example, value)
    return text


def main_conf(prefix: Path) -> str:
    """The minimal main config around the site: what Debian's /etc/nginx/nginx.conf would give, in ``prefix``."""
    # As root the workers would run as nobody, who cannot read the test's temporary folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
events {{ worker_connections 256; }}
http {{
    types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; image/png png; }}
    default_type application/octet-stream;
    access_log {prefix / "access.log"};
{temp}
    include {prefix / "site.conf"};
}}
"""


@dataclass
class Edge:
    """nginx on a free loopback port in front of daphne."""

    web: Web
    proc: Proc
    port: int
    tls_port: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daphne_log(self) -> str:
        return self.web.proc.log()


def start_nginx(binary: str, prefix: Path, site: str) -> Proc:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    (prefix / "nginx.conf").write_text(main_conf(prefix))
    args = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    args += ["-g", f"daemon off; pid {prefix / 'nginx.pid'}; error_log stderr;"]
    return Proc("nginx", args, dict(os.environ)).start()


@pytest.fixture
def edge_factory(nginx, static_root, tmp_path) -> Iterator:
    """edge(tls=False, **daphne_env) starts daphne and nginx in front of it; all are stopped afterwards."""
    started: list[Proc] = []

    def start(*, tls: bool = False, **env: str) -> Edge:
        web = start_web(**env)
        started.append(web.proc)
        port = free_port()
        tls_args = None
        tls_port = None
        if tls:
            tls_port = free_port()
            tls_args = (tls_port, *self_signed(tmp_path))
        site = render_site(port=port, upstream=web.port, static_root=static_root, tls=tls_args)
        proc = start_nginx(nginx, tmp_path / "nginx", site)
        started.append(proc)
        wait_listening(proc, port, timeout=10)
        return Edge(web, proc, port, tls_port)

    yield start
    for proc in reversed(started):
        proc.stop(timeout=10)


@pytest.fixture
def edge(edge_factory) -> Edge:
    return edge_factory()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as files nginx reads (CA file of the client, too)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def fetch(port: int, method: str, path: str, *, headers=None, body=None, tls: ssl.SSLContext | None = None):
    """One request, redirects not followed: (status, headers with lower-case names, body)."""
    if tls:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict, bytes]:
    """An HTTP response read off a raw socket (headers, then Content-Length bytes), within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""

    def more() -> None:
        nonlocal data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk

    while b"\r\n\r\n" not in data:
        more()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", 0))
    while len(data) - len(head) - 4 < length:
        more()
        body = data.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), headers, body[:length]


def token_for(username: str) -> str:
    return ApiToken.issue(make_user(username))[1]


def test_a_body_over_the_limit_is_refused_by_nginx_from_its_headers(edge):
    """Content-Length: 1 GiB, 4 KiB sent: the API's 413 comes back at once, and daphne never hears of it."""
    secret = token_for("alice")
    declared = 1024**3
    head = (
        f"POST /api/bots HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(head + b"x" * 4096)
        status, headers, body = read_response(sock, timeout=5)
    assert time.monotonic() - started < 5
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == TOO_LARGE
    assert "client intended to send too large body: 1073741824 bytes" in edge.proc.log()

    # The same request with a body within the limit goes through to the API; only it reaches daphne.
    status, _, body = fetch(
        edge.port,
        "POST",
        "/api/bots",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        body=json.dumps({"name": "Loja", "whatsappProvider": "simulator"}),
    )
    assert status == 201, body
    log = wait_until(lambda: '"POST /api/bots" 201' in (text := edge.daphne_log()) and text, timeout=5)
    assert log.count('"POST /api/bots"') == 1, log


def test_a_chunked_body_is_refused_once_it_passes_the_limit(edge):
    """Without a Content-Length, nginx reads the body itself and answers 413 soon after 1 MiB, not at its end."""
    secret = token_for("alice")
    head = (
        f"POST /api/bots HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\nAuthorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    budget, sent = 64 * 1024 * 1024, 0
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(head)
        while sent < budget and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += 65536
        status, headers, body = read_response(sock, timeout=5)
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == TOO_LARGE
    assert sent < budget / 4, f"the answer came after {sent} bytes"
    time.sleep(0.5)
    assert '"POST /api/bots"' not in edge.daphne_log()


def test_a_slow_header_is_cut_off_at_the_header_timeout(edge):
    """A header line every 0.5 s: nginx closes the connection once the whole header took HEADER_TIMEOUT s."""
    started = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as sock:
        sock.sendall(b"GET /slowloris HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for line in range(40):
            readable = select.select([sock], [], [], 0.5)[0]
            try:
                if readable and not sock.recv(1024):
                    closed_after = time.monotonic() - started
                    break
                sock.sendall(f"X-Slow-{line}: y\r\n".encode())
            except (ConnectionResetError, BrokenPipeError):  # reset_timedout_connection
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "nginx kept the connection open for 20 s"
    assert HEADER_TIMEOUT - 0.5 <= closed_after <= HEADER_TIMEOUT + 2, closed_after
    assert "/slowloris" not in edge.daphne_log()


def test_a_websocket_works_through_nginx(edge):
    """connection-events through nginx: the upgrade is passed on, the first frame arrives; the Origin checked."""
    alice = make_user("alice")
    bot = make_bot(alice)
    _, secret = ApiToken.issue(alice)
    url = f"ws://127.0.0.1:{edge.port}/api/bots/{bot.pk}/connection-events"
    auth = {"Authorization": f"Bearer {secret}"}
    with connect(url, origin=edge.base, additional_headers=auth, open_timeout=10, proxy=None) as ws:
        frame = json.loads(ws.recv(timeout=10))
        assert frame["event"] == "status"
        assert frame["status"] == "disconnected"
    # The Host reaches daphne with nginx's port: a page of another port of the same host is another origin.
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin=edge.web.base, additional_headers=auth, open_timeout=10, proxy=None)
    assert refused.value.response.status_code == 403


def test_pages_and_the_api_through_nginx_and_static_files_from_it(edge, static_root):
    """Requests go through to daphne; /static/ is nginx's, from the collected STATIC_ROOT, with cache headers."""
    secret = token_for("alice")
    status, headers, body = fetch(edge.port, "GET", "/api/bots", headers={"Authorization": f"Bearer {secret}"})
    assert status == 200 and headers["content-type"].startswith("application/json"), body
    assert json.loads(body) == {"bots": []}

    status, _, page = fetch(edge.port, "GET", "/login/")
    assert status == 200
    stylesheet = re.search(rb'<link rel="stylesheet" href="([^"]+)"', page).group(1).decode()
    status, headers, css = fetch(edge.port, "GET", stylesheet)
    assert status == 200 and headers["content-type"] == "text/css"
    assert headers["cache-control"] == "public, max-age=60"
    assert css == (static_root / "css" / "app.css").read_bytes()

    # The hashed name a production page links to: cached for a year, compressed when asked. daphne
    # (whose STATIC_ROOT was never collected) does not have it, so this answer is nginx's alone.
    hashed = json.loads((static_root / "staticfiles.json").read_text())["paths"]["css/app.css"]
    status, headers, _ = fetch(edge.port, "GET", f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    if (static_root / f"{hashed}.gz").exists():
        assert headers.get("content-encoding") == "gzip"
    assert "/static/" not in edge.daphne_log()
    assert fetch(edge.web.port, "GET", f"/static/{hashed}")[0] == 404


def test_x_forwarded_proto_reaches_django_with_https_on(edge_factory, tmp_path):
    """HTTPS=1 behind nginx with TLS (as certbot sets it up): Django sees https from nginx, never from the client."""
    edge = edge_factory(tls=True, HTTPS="1")
    tls = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    alice = make_user("alice")
    bot = make_bot(alice)
    _, secret = ApiToken.issue(alice)
    auth = {"Authorization": f"Bearer {secret}"}

    # Over TLS: a secure request (no redirect, and HSTS, which Django sends on secure requests only).
    status, headers, body = fetch(edge.tls_port, "GET", "/api/bots", headers=auth, tls=tls)
    assert status == 200, body
    assert "strict-transport-security" in headers

    # Plain HTTP, even with the client's own X-Forwarded-Proto: nginx replaces it, Django redirects.
    status, headers, _ = fetch(edge.port, "GET", "/api/bots", headers={**auth, "X-Forwarded-Proto": "https"})
    assert status == 301 and headers["location"].startswith("https://"), headers

    # A WebSocket over TLS from its own https origin passes the Origin check (the scheme from the header).
    url = f"wss://127.0.0.1:{edge.tls_port}/api/bots/{bot.pk}/connection-events"
    origin = f"https://127.0.0.1:{edge.tls_port}"
    with connect(url, ssl=tls, origin=origin, additional_headers=auth, open_timeout=10, proxy=None) as ws:
        assert json.loads(ws.recv(timeout=10))["event"] == "status"
