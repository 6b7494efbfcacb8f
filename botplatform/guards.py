"""What every HTTP request passes before a view: text the database cannot store is refused.

PostgreSQL refuses NUL characters in text, and a page that looks one up in the
database would answer 500 (``psycopg.DataError``). A path or a query string
holding one is a client's mistake: 400, as a page, or in the API's error shape
(``json_errors_middleware`` turns it into one under /api/). JSON bodies are
checked where they are read (``botplatform.api.parse_body``); sockets at their
handshake (``botplatform.handshake``).
"""

from __future__ import annotations

from collections.abc import Iterable

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware


def holds_nul(path: str, query: Iterable[tuple[str, str]]) -> bool:
    """A NUL character in a path or in a query's names and values (decoded): a request's or a handshake's."""
    return "\x00" in path or any("\x00" in name or "\x00" in value for name, value in query)


def check(request: HttpRequest) -> None:
    if holds_nul(request.path, ((name, value) for name, values in request.GET.lists() for value in values)):
        raise BadRequest("The address holds a NUL character.")


@sync_and_async_middleware
def refuse_nul_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            check(request)
            return await get_response(request)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            check(request)
            return get_response(request)

    return middleware
