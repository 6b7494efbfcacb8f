"""Phone numbers and JIDs as the API takes them (docs/api.md).

``to``, ``from`` and ``phone`` take digits (an optional leading ``+``) or a JID.
Numbers are never rewritten: no country codes guessed, no digits dropped.
"""

from __future__ import annotations

import re

USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, fullwidth...),
# which are no WhatsApp number. A group id is digits, or the creator's number, a dash
# and the creation time (the older form).
PHONE = re.compile(r"^\+?([0-9]{5,20})$")
JID = re.compile(r"^([0-9]{5,20})(?::[0-9]{1,3})?@s\.whatsapp\.net$")
GROUP_JID = re.compile(r"^[0-9]{5,32}(?:-[0-9]{5,20})?@g\.us$")


def phone_digits(value: str) -> str:
    """Digits of a phone number or user JID; ValueError otherwise."""
    value = value.strip()
    match = PHONE.match(value) or JID.match(value)
    if not match:
        raise ValueError(
            "Expected a phone number in digits (an optional leading +) or a JID like 5511999999999@s.whatsapp.net."
        )
    return match.group(1)


def user_jid(value: str) -> str:
    return f"{phone_digits(value)}@{USER_SERVER}"


def chat_jid(value: str) -> str:
    """A user or group chat JID."""
    value = value.strip()
    if GROUP_JID.match(value):
        return value
    return user_jid(value)


def user_of(jid: str) -> str:
    """The user part of a JID: ``5511987654321`` of ``5511987654321:7@s.whatsapp.net``."""
    return jid.partition("@")[0].partition(":")[0]


def account_jid(device_jid: str, phone: str = "") -> str:
    """The user JID of a linked device's own account, '' before pairing."""
    user = user_of(device_jid) or phone
    return f"{user}@{USER_SERVER}" if user else ""


def is_group(chat: str) -> bool:
    return chat.endswith(f"@{GROUP_SERVER}")


def group_jid(value: str) -> str:
    value = value.strip()
    if not GROUP_JID.match(value):
        raise ValueError("Expected a group JID like 120363025246125888@g.us.")
    return value
