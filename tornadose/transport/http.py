"""What every new subscriber's response costs Tornado, made cheaper without changing it.

A reconnect storm admits thousands of subscribers a second; each starts as a Tornado
request whose response headers are set up, and ends its opening with an access-log call.
Two parts of that are the same for every request of a second and can be done once:

* the ``Date`` header: Tornado formats it per request through ``email.utils``, about
  8 µs, a few percent of an admission; :func:`http_date` formats it once a second;
* the access-log line of a stream that opens: :func:`logs_success` says whether the
  application would write one for a successful request at all (formatting the line
  costs even when the logger drops it).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import tornado
from tornado import httputil
from tornado.log import access_log
from tornado.web import Application

__all__ = ["access_log_without", "default_headers", "http_date", "logs_success"]

_SERVER = f"TornadoServer/{tornado.version}"

# (second, its formatted date)
_date: list = [-1, ""]


def http_date() -> str:
    """The current time as an HTTP date (``Wed, 02 Dec 2026 04:33:13 GMT``), formatted at
    most once a second: the same string ``httputil.format_timestamp(time.time())``
    gives, which also drops the fraction of a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[1] = httputil.format_timestamp(now)
        _date[0] = now
    return _date[1]


def default_headers() -> httputil.HTTPHeaders:
    """The headers ``RequestHandler.clear()`` starts a response with (``Server``,
    ``Content-Type``, ``Date``), in the same order, with the cached date."""
    headers = httputil.HTTPHeaders()
    headers["Server"] = _SERVER
    headers["Content-Type"] = "text/html; charset=UTF-8"
    headers["Date"] = http_date()
    return headers


def logs_success(application: Application) -> bool:
    """Whether ``application.log_request`` may write anything for a request answered
    with a status below 400: always when the application has a ``log_function`` or its
    own ``log_request``, otherwise when ``tornado.access`` takes INFO records."""
    return (
        "log_function" in application.settings
        or type(application).log_request is not Application.log_request
        or access_log.isEnabledFor(logging.INFO)
    )


def access_log_without(*statuses: int) -> Callable[[Any], None]:
    """A ``log_function`` for the Application settings: Tornado's own access log (the
    same records, levels and format) less the requests answered with one of
    ``statuses``, e.g. ``access_log_without(401, 403)`` to keep entitlement refusals out
    of the log while every other request is logged as before."""
    skip = frozenset(statuses)

    def log_function(handler: Any) -> None:
        status = handler.get_status()
        if status in skip:
            return
        if status < 400:
            method = access_log.info
        elif status < 500:
            method = access_log.warning
        else:
            method = access_log.error
        elapsed = 1000.0 * handler.request.request_time()
        method("%d %s %.2fms", status, handler._request_summary(), elapsed)

    return log_function
