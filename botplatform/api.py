"""The JSON API's error shape and how it reads requests (docs/api.md): shared by every router.

Every error is ``{"error": {"code", "message", "fields"?}}``. Checks run in the
order 401, 404, 413, 415, 400: auth is Ninja's, the bot lookup comes first in
each view, and request bodies are read by :func:`parse_body` after it.
:class:`Api` is a NinjaAPI that answers every error in that shape; the
project's instance, with its auth and routers, is made in botplatform/urls.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import pydantic
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.utils.decorators import sync_and_async_middleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import APIKeyCookie
from ninja.utils import check_csrf

logger = logging.getLogger(__name__)
Schema = TypeVar("Schema", bound=pydantic.BaseModel)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, str] | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields, self.headers = status, code, message, fields, headers or {}


def error_response(status: int, code: str, message: str, fields: dict | None = None) -> JsonResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return JsonResponse({"error": error}, status=status)


class SessionAuth(APIKeyCookie):
    """Django's session, with CSRF checked only once the user is known (401 before 403)."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        super().__init__(csrf=False)

    def authenticate(self, request: HttpRequest, key: str | None):
        if not request.user.is_authenticated:
            return None
        # The token is taken from the X-CSRFToken header only. Otherwise Django parses a
        # form body for it, and a huge or malformed one raises before 413 or 415 can answer.
        request.POST = QueryDict()
        if check_csrf(request) is not None:
            raise ApiError(403, "csrf_failed", "CSRF token missing or incorrect. Send it in the X-CSRFToken header.")
        return request.user


NINJA_LOCATIONS = ("body", "payload", "query", "path")


def validation_fields(errors: list[dict], locations: tuple[str, ...] = NINJA_LOCATIONS) -> dict[str, str]:
    """Pydantic/Ninja errors as ``{field: message}``, keyed by the client's own names.

    ``locations`` are the parts of Ninja's ``loc`` that name where a value came
    from rather than the field; errors from :func:`parse_body` have none, so a
    client's unknown key ``path`` is reported as ``path``.
    """
    fields: dict[str, str] = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in locations]
        key = ".".join(loc) or "body"
        if error.get("type") == "extra_forbidden":
            message = "Unknown field."
        elif error.get("type") == "missing":
            message = "This field is required."
        else:
            message = error.get("msg", "Invalid value.").removeprefix("Value error, ")
        fields.setdefault(key, message)
    return fields


def nul_fields(data: dict) -> dict[str, str]:
    """The values holding a NUL character, which PostgreSQL cannot store in text.

    Iterative: the body may be nested nearly as deep as the JSON parser allows.
    """
    fields: dict[str, str] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((str(key),), value) for key, value in data.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                fields.setdefault(".".join(path), "Must not contain NUL characters.")
        elif isinstance(value, dict):
            stack.extend(((*path, str(key)), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, str(index)), item) for index, item in enumerate(value))
    return fields


def read_body(request: HttpRequest) -> bytes:
    """The request's body, or 413 when it is over DATA_UPLOAD_MAX_MEMORY_SIZE.

    Endpoints that take no body call it too (through ``bots.api.base.get_bot``), so
    that a body over the limit is refused the same way everywhere, after auth and lookup.
    """
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    try:
        if declared > limit:
            raise RequestDataTooBig
        body = request.body
    except RequestDataTooBig:
        body = None
    if body is None or len(body) > limit:
        raise ApiError(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
    return body


def parse_body(request: HttpRequest, schema: type[Schema], *, optional: bool = False) -> Schema:
    """Read a JSON body after the auth and lookup checks: 413, then 415, then 400.

    With ``optional``, a request without a body (any or no content type) is
    read as ``{}``, for endpoints whose fields are all optional.
    """
    body = read_body(request)
    if optional and not body:
        return schema.model_validate({})
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
    try:
        data = json.loads(body)
    # ValueError covers bad JSON, bad UTF-8 and integers over Python's digit limit;
    # RecursionError, arrays or objects nested too deeply.
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "validation_error", "The body must be a JSON object.")
    if fields := nul_fields(data):
        raise ApiError(400, "validation_error", "Some fields are invalid.", fields)
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ApiError(
            400,
            "validation_error",
            "Some fields are invalid.",
            validation_fields(exc.errors(include_url=False), locations=()),
        ) from None


def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    response = error_response(exc.status, exc.code, exc.message, exc.fields)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = error_response(
        401, "unauthorized", "Authentication required: send 'Authorization: Bearer <token>' or log in."
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return error_response(400, "validation_error", "Some fields are invalid.", validation_fields(exc.errors))


def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "not_found", str(exc) or "Not found.")


def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(exc.status_code, "http_error", str(exc))


def on_unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("Unexpected error in %s %s", request.method, request.path)
    return error_response(500, "server_error", "Something went wrong on our side. It has been logged.")


def read_only(decorator=None):
    """The decorator of the OpenAPI document and its docs page: GET and HEAD only, else 405.

    Ninja's views answer any method. Exempt from CSRF, which would answer 403 first to
    the unsafe methods they no longer take; ``decorator`` (``docs_decorator``) runs inside.
    """

    def decorate(view):
        view = require_safe(view)
        if decorator is not None:
            view = decorator(view)
        return csrf_exempt(view)

    return decorate


class Api(NinjaAPI):
    """A NinjaAPI whose every error, expected or not, is in the project's shape.

    Its OpenAPI document and docs page answer 405 (with ``Allow``) to methods other
    than GET and HEAD, as its operations do to the methods they have not.
    """

    def __init__(self, *, docs_decorator=None, **kwargs) -> None:
        super().__init__(docs_decorator=read_only(docs_decorator), **kwargs)
        self.add_exception_handler(ApiError, on_api_error)
        self.add_exception_handler(AuthenticationError, on_authentication_error)
        self.add_exception_handler(ValidationError, on_validation_error)
        self.add_exception_handler(Http404, on_not_found)
        self.add_exception_handler(HttpError, on_http_error)
        self.add_exception_handler(Exception, on_unexpected_error)


STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "server_error",
}


def as_json_error(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Django's own error pages (404, 405, CSRF, 500) under /api/, in the API's error shape."""
    if (
        not request.path.startswith("/api/")
        or response.status_code < 400
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    status = response.status_code
    code = STATUS_CODES.get(status, "error")
    message = {
        404: "Not found.",
        405: f"Method {request.method} is not allowed here.",
        500: "Something went wrong on our side. It has been logged.",
    }.get(status, code.replace("_", " ").capitalize() + ".")
    replacement = error_response(status, code, message)
    if response.has_header("Allow"):
        replacement["Allow"] = response["Allow"]
    return replacement


@sync_and_async_middleware
def json_errors_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            return as_json_error(request, await get_response(request))

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            return as_json_error(request, get_response(request))

    return middleware
