"""Strict readers for settings that come from the environment.

Each helper fails with ``ImproperlyConfigured`` naming the variable, so a bad
deployment stops at start-up instead of misbehaving later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured

TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off"}


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def fail(self, name: str, expected: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"{name}={self.environ.get(name)!r} is invalid: expected {expected}.")

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in TRUE_VALUES:
            return True
        if value.lower() in FALSE_VALUES:
            return False
        raise self.fail(name, "1 or 0")

    def int(self, name: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.fail(name, "a whole number") from None
        if (min is not None and number < min) or (max is not None and number > max):
            raise self.fail(name, f"a whole number from {min} to {max}")
        return number

    def float(self, name: str, default: float, *, min: float | None = None, max: float | None = None) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self.fail(name, "a number") from None
        if number != number or (min is not None and number < min) or (max is not None and number > max):
            raise self.fail(name, f"a number from {min} to {max}")
        return number

    def list(self, name: str, default: list[str]) -> list[str]:
        value = self.raw(name)
        if value is None:
            return list(default)
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise self.fail(name, "a comma-separated list")
        return items

    def rate(self, name: str, default: str) -> tuple[int, int]:
        """A rate limit written ``COUNT/SECONDS``, e.g. ``5/60``."""
        value = self.raw(name) or default
        count, _, seconds = value.partition("/")
        try:
            parsed = (int(count), int(seconds))
        except ValueError:
            raise self.fail(name, "COUNT/SECONDS, e.g. 5/60") from None
        if parsed[0] < 1 or parsed[1] < 1:
            raise self.fail(name, "COUNT/SECONDS with both above zero")
        return parsed

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
            raise self.fail(name, "a URL starting with " + " or ".join(f"{s}://" for s in schemes))
        return value
