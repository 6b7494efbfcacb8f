"""whatsmeow's connect failures, as neonize hands them over, read as reasons an operator can act on.

The events are neonize's own protobuf objects, built as goneonize's encoder builds them
(encoder.go, EncodeConnectFailure) and passed through serialization as Go passes them. A code
outside neonize's enum cannot pass at all: the field is required, the event is refused, and
neonize's connect() ends with Go's error instead, which is read too.
"""

from __future__ import annotations

import uuid

import pytest

from tests.whatsapp.test_neonize_go import Recorder
from whatsapp.providers import connect_failures
from whatsapp.providers.neonize_events import Handlers

neonize_events = pytest.importorskip("neonize.events")
from google.protobuf.message import EncodeError  # noqa: E402
from neonize.proto import Neonize_pb2 as proto  # noqa: E402

NAMES = {
    400: "GENERIC",
    401: "LOGGED_OUT",
    402: "TEMP_BANNED",
    403: "MAIN_DEVICE_GONE",
    405: "CLIENT_OUTDATED",
    406: "UNKNOWN_LOGOUT",
    409: "BAD_USER_AGENT",
    500: "INTERNAL_SERVER_ERROR",
    501: "EXPERIMENTAL",
    503: "SERVICE_UNAVAILABLE",
}


def failure(code: int, message: str = ""):
    """A ConnectFailureEv for this code as it comes out of Go: serialized, then parsed by neonize."""
    raw = proto.Node(Tag="failure", Attrs=[proto.NodeAttrs(name="reason", text=str(code))])
    event = neonize_events.ConnectFailureEv(Message=message, Raw=raw)
    if code in NAMES:  # EncodeConnectFailureReason: nil for any other code
        event.Reason = proto.ConnectFailureReason.Value(NAMES[code])
    return neonize_events.ConnectFailureEv.FromString(event.SerializeToString())


def told(event, handler: str = "connect_failure") -> tuple[str, str]:
    """What the bot is told: the provider event (disconnected: retried; failed; logged_out) and its reason."""
    events = Recorder()
    getattr(Handlers(uuid.uuid4(), events, lambda client: True, None), handler)(None, event)
    ((kind, _, reason),) = events.calls
    return kind, reason


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (400, "disconnected", "connect_failure_400: WhatsApp refused the connection; retrying"),
        (409, "failed", "connect_failure_409: WhatsApp refused this client's user agent; update neonize"),
        (501, "disconnected", "connect_failure_501"),
        (500, "disconnected", "connect_failure_500: WhatsApp had an internal error; retrying"),
        (503, "disconnected", "connect_failure_503: WhatsApp is unavailable for now; retrying"),
        (405, "failed", "client_outdated: WhatsApp refuses this version of the library (405); update neonize"),
        (402, "failed", "temporary_ban:"),
        (401, "logged_out", "unlinked from the phone (401): link the bot again"),
        (403, "logged_out", "the WhatsApp account is locked (403): open WhatsApp on the phone"),
        (406, "logged_out", "the number is banned from WhatsApp (406)"),
    ],
)
def test_each_connect_failure_code_says_what_to_do(code, kind, says):
    told_kind, reason = told(failure(code))

    assert told_kind == kind, reason
    assert says in reason
    assert reason.split(":")[0] in {"connect_failure_" + str(code), "client_outdated", "temporary_ban"} or (
        kind == "logged_out"
    )


@pytest.mark.parametrize("code", [411, 415, 418])
def test_a_code_neonize_does_not_know_ends_the_dial_with_a_reason_that_says_so(code):
    # Go's proto.Marshal refuses the event as Python's protobuf does; neonize's connect() then raises
    # with Go's error (goneonize main.go, CallbackFunction), which the provider reads.
    with pytest.raises(EncodeError, match="Reason"):
        failure(code)
    go_error = "proto: required field neonize.ConnectFailure.Reason not set"

    reason = connect_failures.unpassed(go_error)

    assert reason.startswith("connect_failure_other: ") and reason.endswith("; retrying")
    assert connect_failures.unpassed("failed to dial whatsapp web websocket") == ""


def test_a_failure_with_no_reason_is_retried_as_unknown():
    assert told(neonize_events.ConnectFailureEv()) == ("disconnected", "connect_failure_unknown: retrying")


def test_what_the_server_says_is_kept_short():
    kind, reason = told(failure(409, "x" * 1000))

    assert kind == "failed" and reason.endswith("(WhatsApp says: " + "x" * 200 + ")")
    assert len(reason) < 500, "lastError holds 500 characters"


def test_an_outdated_client_and_a_logout_on_connect_read_as_their_connect_failures():
    assert told(neonize_events.ClientOutdatedEv(), "client_outdated") == told(failure(405))
    locked = neonize_events.LoggedOutEv(OnConnect=True, Reason=proto.MAIN_DEVICE_GONE)
    assert told(locked, "logged_out") == told(failure(403))
    banned = neonize_events.LoggedOutEv(OnConnect=True, Reason=proto.UNKNOWN_LOGOUT)
    assert told(banned, "logged_out") == told(failure(406))
    assert told(neonize_events.LoggedOutEv(OnConnect=False), "logged_out") == ("logged_out", "unlinked from the phone")
