"""whatsmeow's connect failure codes, as reasons an operator can act on (docs/api.md, lastError).

whatsmeow (types/events/events.go, connectionevents.go ``handleConnectFailure``) turns a
``<failure reason="...">`` from the server into: ``LoggedOut`` for 401, 403 and 406 (the store row
deleted); ``TemporaryBan`` for 402; ``ClientOutdated`` for 405; nothing at all for 500 and 503
(it reconnects by itself) nor for 413/414 (it refreshes its token); and ``ConnectFailure`` for every
other code (400, 409, 415, 418, 501...).

goneonize passes each event on as a protobuf whose fields are ``required`` (Neonize.proto), and its
encoder knows ten codes (``ConnectFailureReason``: 400-406, 409, 500, 501, 503). For any other, the
reason is left unset, Go's ``proto.Marshal`` refuses the event, and the client's event loop ends
(``CallbackFunction`` in main.go returns the error): no event arrives, and ``connect()`` raises
``proto: required field neonize.ConnectFailure.Reason not set``. :func:`unpassed` reads that error.
"""

from __future__ import annotations

import datetime
import re
from enum import Enum


class Outcome(Enum):
    RETRY = "disconnected"  # backed off and tried again (the shard gives up after a few)
    FAILED = "failed"  # the end: retrying cannot help until someone acts
    LOGGED_OUT = "logged_out"  # the device is gone from whatsmeow's store: a new QR next time


# What whatsmeow's LoggedOut without a code it tells apart means: the phone removed the device.
UNLINKED = "unlinked from the phone"

# code: (outcome, lastError), for the codes neonize can pass on. Those whatsmeow turns into other
# events are here too: those events read the same, and so would a ConnectFailure carrying one.
REASONS: dict[int, tuple[Outcome, str]] = {
    400: (Outcome.RETRY, "connect_failure_400: WhatsApp refused the connection; retrying"),
    401: (Outcome.LOGGED_OUT, "unlinked from the phone (401): link the bot again"),
    402: (Outcome.FAILED, "temporary_ban: WhatsApp banned the number for a while (402); connect when it ends"),
    403: (Outcome.LOGGED_OUT, "the WhatsApp account is locked (403): open WhatsApp on the phone"),
    405: (Outcome.FAILED, "client_outdated: WhatsApp refuses this version of the library (405); update neonize"),
    406: (Outcome.LOGGED_OUT, "the number is banned from WhatsApp (406)"),
    409: (Outcome.FAILED, "connect_failure_409: WhatsApp refused this client's user agent; update neonize"),
    500: (Outcome.RETRY, "connect_failure_500: WhatsApp had an internal error; retrying"),
    501: (Outcome.RETRY, "connect_failure_501: WhatsApp refused an experimental feature; retrying"),
    503: (Outcome.RETRY, "connect_failure_503: WhatsApp is unavailable for now; retrying"),
}

# neonize's ConnectFailureReason (Neonize.proto) as whatsmeow's codes.
NEONIZE_CODES = {
    "GENERIC": 400,
    "LOGGED_OUT": 401,
    "TEMP_BANNED": 402,
    "MAIN_DEVICE_GONE": 403,
    "CLIENT_OUTDATED": 405,
    "UNKNOWN_LOGOUT": 406,
    "BAD_USER_AGENT": 409,
    "INTERNAL_SERVER_ERROR": 500,
    "EXPERIMENTAL": 501,
    "SERVICE_UNAVAILABLE": 503,
}


def code_of(event) -> int:
    """whatsmeow's code from neonize's enum value; 0 if unset (an unset enum field reads as its first value)."""
    from neonize.proto import Neonize_pb2 as proto

    return NEONIZE_CODES[proto.ConnectFailureReason.Name(event.Reason)] if event.HasField("Reason") else 0


def connect_failure(event) -> tuple[Outcome, str]:
    """What a neonize ConnectFailureEv means for the bot: its outcome and its lastError."""
    code = code_of(event)
    outcome, reason = REASONS.get(code, (Outcome.RETRY, f"connect_failure_{code or 'unknown'}: retrying"))
    if event.Message:
        reason += f" (WhatsApp says: {event.Message[:200]})"
    return outcome, reason


def temporary_ban(reason: str, expire: int) -> str:
    """A temporary ban's lastError: why, and when it ends (the operator needs the time, not a duration)."""
    ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expire)
    return f"temporary_ban: {reason.lower()}, until {ends:%Y-%m-%d %H:%M} UTC ({expire} s)"


def for_code(code: int, *, ban_reason: str = "unknown reason", ban_expire: int = 0) -> tuple[Outcome, str]:
    """What a ``<failure reason="code">`` from the server ends in, by the event whatsmeow makes of it and
    what neonize passes on: the simulator's refusals read exactly as the adapter's."""
    if code == 402:
        return Outcome.FAILED, temporary_ban(ban_reason, ban_expire)
    if code == 401:
        return Outcome.LOGGED_OUT, UNLINKED
    if code in REASONS:
        return REASONS[code]
    # A code neonize's encoder does not know: the event is refused and connect() ends with Go's error.
    return Outcome.RETRY, unpassed("proto: required field neonize.ConnectFailure.Reason not set")


def logged_out(event) -> str:
    """The reason of a neonize LoggedOutEv: 401 unlinked, 403 locked, 406 banned (whatsmeow's comments)."""
    code = code_of(event) if event.OnConnect else 0
    return REASONS[code][1] if code in (403, 406) else UNLINKED


# Go's error for an event with a required field unset (google.golang.org/protobuf: RequiredNotSet).
UNPASSED = re.compile(r"required field neonize\.(\w+)\.\w+ not set")


def unpassed(error: str) -> str:
    """The reason for a connect() that ended because neonize could not pass an event on; "" for another error."""
    match = UNPASSED.search(error)
    if match is None:
        return ""
    if match.group(1) == "ConnectFailure":
        return (
            "connect_failure_other: WhatsApp refused the connection with a code neonize cannot pass on"
            " (not one of the ten it knows); retrying"
        )
    if match.group(1) == "TemporaryBan":
        return "temporary_ban: WhatsApp banned the number for a while, for a reason neonize cannot pass on"
    return f"connect failed: neonize could not pass on a {match.group(1)} event; retrying"
