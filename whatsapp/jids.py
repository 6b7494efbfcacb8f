"""Phone numbers and JIDs as the API takes them (docs/api.md).

``to``, ``from`` and ``phone`` take digits (an optional leading ``+``) or a JID.
Numbers are never rewritten: no country codes guessed, no digits dropped.
"""

from __future__ import annotations

import re

USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
# The rules, once: the regexes below and the patterns of the OpenAPI document are made of these.
# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, fullwidth...),
# which are no WhatsApp number. A group id is digits, or the creator's number, a dash
# and the creation time (the older form).
NUMBER = r"[0-9]{5,20}"
DEVICE = r"(?::[0-9]{1,3})?"
USER_SUFFIX = DEVICE + r"@s\.whatsapp\.net"
GROUP = r"[0-9]{5,32}(?:-[0-9]{5,20})?@g\.us"

PHONE = re.compile(r"^\+?(" + NUMBER + r")$")
JID = re.compile(r"^(" + NUMBER + r")" + USER_SUFFIX + r"$")
GROUP_JID = re.compile(r"^" + GROUP + r"$")


def char_class(chars: str, *, negated: bool = False) -> str:
    """A regex character class of these (BMP) characters in \\uXXXX escapes, read alike by ECMA-262 and Python."""
    ranges: list[list[int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    body = "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in ranges)
    return ("[^" if negated else "[") + body + "]"


# What str.strip() removes around a value before it is checked (no isspace() character is
# outside the BMP). Written out rather than \s, which ECMA-262 reads otherwise (U+FEFF, U+001C).
SPACES = "".join(c for c in map(chr, range(0x10000)) if c.isspace())
SPACE = char_class(SPACES)


def schema_pattern(*forms: str) -> str:
    """A JSON Schema pattern (ECMA-262, which Python's re reads the same way) for one of these forms.

    Exactly what the functions below accept: surrounding spaces, which they strip, included.
    """
    return "^" + SPACE + "*(?:" + "|".join(forms) + ")" + SPACE + "*$"


# For the OpenAPI document: phone_digits and user_jid, chat_jid, group_jid.
USER_PATTERN = schema_pattern(r"\+?" + NUMBER, NUMBER + USER_SUFFIX)
CHAT_PATTERN = schema_pattern(r"\+?" + NUMBER, NUMBER + USER_SUFFIX, GROUP)
GROUP_PATTERN = schema_pattern(GROUP)
USER_EXAMPLES = ["5511987654321", "+5511987654321", "5511987654321@s.whatsapp.net"]
GROUP_EXAMPLES = ["120363025246125888@g.us"]
CHAT_EXAMPLES = [*USER_EXAMPLES, *GROUP_EXAMPLES]


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
