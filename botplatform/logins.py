"""django-axes' two callables (botplatform/settings.py): how many failed logins, and from where.

The settings name them as dotted paths, so that they read the settings at call time.
"""

from __future__ import annotations

from axes.models import AccessAttempt
from django.conf import settings
from django.http import HttpRequest

from botplatform.proxy import relayed_for


def failure_limit(request: HttpRequest, credentials: dict | None) -> int:
    """AXES_FAILURE_LIMIT: the account's limit once the account's own failures reach it, else the address's.

    axes has one limit for all its criteria, and locks when the larger count (this username's failures,
    this address's) reaches it. Answering 10 only when the username's count is already 10 or more, 50
    otherwise, locks exactly when the account has 10 failures or the address 50. axes takes a callable
    limit (request and credentials in, a number out); the other way would be a handler of our own. The
    username's count is the database handler's: its rows for the username (axes' get_client_username
    picks it the same way), all failures of those whose last one is within the cool-off.
    """
    username = credentials.get("username") if credentials else request.POST.get("username")
    if username is not None:
        rows = AccessAttempt.objects.filter(
            username=username, attempt_time__gte=request.axes_attempt_time - settings.AXES_COOLOFF_TIME
        )
        if sum(rows.values_list("failures_since_start", flat=True)) >= settings.LOGIN_FAILURES_PER_ACCOUNT:
            return settings.LOGIN_FAILURES_PER_ACCOUNT
    return settings.LOGIN_FAILURES_PER_ADDRESS


def client_address(request: HttpRequest) -> str:
    """AXES_CLIENT_IP_CALLABLE: the client nginx names (LOGIN_CLIENT_HEADER, with HTTPS=1), else the peer."""
    return relayed_for(request, settings.LOGIN_CLIENT_HEADER) or request.META.get("REMOTE_ADDR", "")
