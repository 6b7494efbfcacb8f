"""English and Brazilian Portuguese: every string the pages and messages mark for translation is translated.

The compiled catalog is committed (locale/pt_BR/LC_MESSAGES/django.mo), so nothing here needs gettext's
tools. When a test fails: `python manage.py makemessages -l pt_BR --no-location --ignore=tests
--ignore=benchmarks --ignore=static --ignore=test-artifacts --ignore=staticfiles`, translate the new entries,
then `python manage.py compilemessages -l pt_BR --ignore=.venv`.
"""

from __future__ import annotations

import ast
import gettext
import re
from pathlib import Path

from django.utils.translation.template import templatize

ROOT = Path(__file__).resolve().parent.parent
PO = ROOT / "locale" / "pt_BR" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
GETTEXT_NAMES = {
    "_",
    "gettext",
    "gettext_lazy",
    "ngettext",
    "ngettext_lazy",
    "pgettext",
    "pgettext_lazy",
    "npgettext",
    "npgettext_lazy",
}
TEMPLATE_CALL = re.compile(r"\b(n?p?gettext)\(((?:u'(?:[^'\\]|\\.)*'(?:,\s*)?)+)")
TEMPLATE_STRING = re.compile(r"u'(?:[^'\\]|\\.)*'")


def key(function: str, args: list[str]) -> str:
    """The catalog key of a call: the msgid, behind its context ("ctx\\x04msgid") for pgettext."""
    return f"{args[0]}\x04{args[1]}" if function.lstrip("n").startswith("p") else args[0]


def marked_in_python(path: Path) -> set[str]:
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name not in GETTEXT_NAMES:
            continue
        args = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
        if args:
            keys.add(key(name, args))
    return keys


def marked_in_template(path: Path) -> set[str]:
    keys = set()
    for function, raw in TEMPLATE_CALL.findall(templatize(path.read_text(), origin=str(path))):
        keys.add(key(function, [ast.literal_eval(s) for s in TEMPLATE_STRING.findall(raw)]))
    return keys


def marked_strings() -> dict[str, str]:
    """Every string marked for translation in the project's code and templates, with where it is."""
    found: dict[str, str] = {}
    python = [p for app in ("bots", "whatsapp", "botplatform") for p in (ROOT / app).rglob("*.py")]
    for path in python:
        if "migrations" not in path.parts:
            found.update(dict.fromkeys(marked_in_python(path), str(path.relative_to(ROOT))))
    for path in (ROOT / "templates").rglob("*.html"):
        found.update(dict.fromkeys(marked_in_template(path), str(path.relative_to(ROOT))))
    return found


def po_entries() -> list[dict]:
    """The entries of the .po file: {"msgctxt"?, "msgid", "msgid_plural"?, "msgstr"... , "flags"}."""
    entries = []
    for block in PO.read_text().strip().split("\n\n"):
        entry: dict = {"flags": ""}
        current = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] += line
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                entry[current] += ast.literal_eval(line)
            else:
                current, _, value = line.partition(" ")
                entry[current] = ast.literal_eval(value)
        entries.append(entry)
    return entries[1:]  # the header


def compiled() -> dict:
    with MO.open("rb") as file:
        return gettext.GNUTranslations(file)._catalog  # type: ignore[attr-defined]


def test_it_translates_every_entry_of_the_portuguese_catalog():
    entries = po_entries()

    untranslated = [e["msgid"] for e in entries if not all(v for k, v in e.items() if k.startswith("msgstr"))]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    assert len(entries) > 150
    assert untranslated == []
    assert fuzzy == []


def test_it_ships_the_catalog_compiled_from_its_source():
    catalog = compiled()

    for entry in po_entries():
        msgid = f"{entry['msgctxt']}\x04{entry['msgid']}" if "msgctxt" in entry else entry["msgid"]
        if "msgid_plural" in entry:
            assert catalog[(msgid, 0)] == entry["msgstr[0]"], msgid
            assert catalog[(msgid, 1)] == entry["msgstr[1]"], msgid
        else:
            assert catalog[msgid] == entry["msgstr"], f"{msgid!r}: run compilemessages"


def test_it_has_a_translation_for_every_string_the_project_marks():
    catalog = compiled()
    known = {k[0] if isinstance(k, tuple) else k for k in catalog}

    missing = {msgid: where for msgid, where in marked_strings().items() if msgid not in known}

    assert len(marked_strings()) > 150
    assert missing == {}, "new strings: run makemessages, translate them, compilemessages (see this file's docstring)"
