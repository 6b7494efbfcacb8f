"""Phone numbers and JIDs as the API takes them (docs/api.md).

``to``, ``from`` and ``phone`` take digits (an optional leading ``+``) or a JID.
Numbers are never rewritten: no country codes guessed, no digits dropped. A contact
whose number WhatsApp hides is ``<lid>@lid``; one person is one chat, keyed by the
phone JID whenever WhatsApp gives it beside the LID (:func:`conversation`).
"""

from __future__ import annotations

import re

USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
LID_SERVER = "lid"
# The rules, once: the regexes below and the patterns of the OpenAPI document are made of these.
# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, fullwidth...),
# which are no WhatsApp number. A group id is digits, or the creator's number, a dash
# and the creation time (the older form).
NUMBER = r"[0-9]{5,20}"
DEVICE = r"(?::[0-9]{1,3})?"
USER_SUFFIX = DEVICE + r"@s\.whatsapp\.net"
GROUP = r"[0-9]{5,32}(?:-[0-9]{5,20})?@g\.us"
# A LID (a linked identity: a number of its own that stands for a hidden phone number).
LID = r"[0-9]{5,20}" + DEVICE + r"@lid"
# Where posts come from that are nobody's chat: status updates and channels (newsletters).
FEED = r"status@broadcast|[0-9]{5,32}@newsletter"

PHONE = re.compile(r"^\+?(" + NUMBER + r")$")
JID = re.compile(r"^(" + NUMBER + r")" + USER_SUFFIX + r"$")
GROUP_JID = re.compile(r"^" + GROUP + r"$")
GROUP_OR_FEED_JID = re.compile(r"^(?:" + GROUP + "|" + FEED + r")$")
LID_JID = re.compile(r"^([0-9]{5,20})" + DEVICE + r"@lid$")


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


# For the OpenAPI document: phone_digits and phone_jid, user_jid, chat_jid, group_jid.
PHONE_PATTERN = schema_pattern(r"\+?" + NUMBER, NUMBER + USER_SUFFIX)
USER_PATTERN = schema_pattern(r"\+?" + NUMBER, NUMBER + USER_SUFFIX, LID)
CHAT_PATTERN = schema_pattern(r"\+?" + NUMBER, NUMBER + USER_SUFFIX, LID, GROUP)
GROUP_PATTERN = schema_pattern(GROUP)
PHONE_EXAMPLES = ["5511987654321", "+5511987654321", "5511987654321@s.whatsapp.net"]
USER_EXAMPLES = [*PHONE_EXAMPLES, "203012345678901@lid"]
GROUP_EXAMPLES = ["120363025246125888@g.us"]
GROUP_OR_FEED_PATTERN = schema_pattern(GROUP, FEED)
GROUP_OR_FEED_EXAMPLES = [*GROUP_EXAMPLES, "status@broadcast", "120363144038483540@newsletter"]
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


def phone_jid(value: str) -> str:
    """The user JID of a phone number or user JID (never a LID); ValueError otherwise."""
    return f"{phone_digits(value)}@{USER_SERVER}"


def user_jid(value: str) -> str:
    """A person's JID: of a phone number or user JID, or a LID (``<lid>@lid``), without a device."""
    match = LID_JID.match(value.strip())
    if match:
        return f"{match.group(1)}@{LID_SERVER}"
    try:
        return phone_jid(value)
    except ValueError:
        raise ValueError(
            "Expected a phone number in digits (an optional leading +), a JID like 5511999999999@s.whatsapp.net"
            " or a LID like 203012345678901@lid."
        ) from None


def chat_jid(value: str) -> str:
    """A user (phone or LID) or group chat JID."""
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


def is_lid(jid: str) -> bool:
    return jid.endswith(f"@{LID_SERVER}")


def bare(jid: str) -> str:
    """A JID without its device: ``5511987654321@s.whatsapp.net`` of ``5511987654321:7@s.whatsapp.net``."""
    user_device, at, server = jid.partition("@")
    return f"{user_device.partition(':')[0]}{at}{server}"


def phone_or_lid(jid: str, alt: str) -> str:
    """One person's JID: the phone JID ``alt`` when ``jid`` is their LID and WhatsApp gave both."""
    if is_lid(jid) and alt.endswith(f"@{USER_SERVER}") and user_of(alt):
        return bare(alt)
    return jid


# Posts, not conversations: status updates and channels (never answered, not stored by neonize).
STATUS = "status@broadcast"
NEWSLETTER_SERVER = "newsletter"


def is_feed(chat: str) -> bool:
    return chat == STATUS or chat.endswith(f"@{NEWSLETTER_SERVER}")


def conversation(chat: str, sender: str, *, sender_alt: str = "", recipient_alt: str = "") -> tuple[str, str]:
    """The (chat, sender) a message is kept under: one person is one chat (docs/whatsmeow.md).

    whatsmeow addresses a person by phone JID or by LID, and gives the other address when it
    has it: ``sender_alt`` for whoever sent it (whatsmeow's SenderAlt), ``recipient_alt`` for
    the customer of a message the bot's own phone sent (RecipientAlt). The phone JID wins;
    without one the LID stays. A group (or a broadcast) stays what it is.
    """
    person = phone_or_lid(bare(sender), sender_alt)
    if is_group(chat) or chat.endswith("@broadcast"):
        return chat, person
    if bare(chat) == bare(sender):
        return person, person
    return phone_or_lid(chat, recipient_alt), person


def group_jid(value: str) -> str:
    value = value.strip()
    if not GROUP_JID.match(value):
        raise ValueError("Expected a group JID like 120363025246125888@g.us.")
    return value


def group_or_feed_jid(value: str) -> str:
    value = value.strip()
    if not GROUP_OR_FEED_JID.match(value):
        raise ValueError(
            "Expected a group JID like 120363025246125888@g.us, status@broadcast or a channel's <id>@newsletter."
        )
    return value
