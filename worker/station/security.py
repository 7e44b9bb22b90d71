"""What stands between the review station and the network: logins, CSRF, and response headers.

* Every path needs a logged-in, active operator except :data:`PUBLIC` (the login form, the
  station's own CSS and script, a health check that says nothing): :class:`RequireLogin` is a
  middleware, so a new page or API is covered the moment it exists. Pages send a stranger to the
  login form; the API and the crops answer 401.
* Sessions are cookies signed with the station's secret (``DIGITS_STATION_SECRET``, else a key
  file made once, :func:`secret`); HttpOnly, SameSite=Strict, Secure behind HTTPS
  (``DIGITS_STATION_HTTPS``), and they lapse after ``DIGITS_SESSION_MAX_AGE_S``. An operator who is
  disabled loses every session at their next request.
* CSRF: a random token per session, in every form (``csrf_token``) and sent by the page's script
  in the ``X-CSRF-Token`` header; every POST without the session's token is refused (403), and so
  is one whose ``Origin`` is another site's.
* Headers: a Content-Security-Policy that allows only the station's own script, style and images
  (no inline script at all), no framing, no MIME sniffing, no referrer to other sites, no caching of pages.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digits.worker.config import Settings
from digits.worker.queue import signing
from digits.worker.store import db, operators

PUBLIC = ("/login", "/healthz", "/favicon.ico")  # the last answers 404, not a redirect
PUBLIC_PREFIXES = ("/static/",)
# Paths answered with a status code rather than a redirect to the login form.
API_PREFIXES = ("/api/", "/crops/")
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_COOKIE = "digits_station"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def secret(settings: Settings) -> str:
    """The key session cookies are signed with: the setting, else the key file (made once)."""
    if settings.station_secret:
        return settings.station_secret
    key = signing.read_or_create(
        settings.station_secret_file, "DIGITS_STATION_SECRET", "station secret"
    )
    return key.decode("utf-8")


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, sent: str | None) -> bool:
    expected = request.session.get("csrf")
    if not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "surrogatepass"))


def same_origin(request: Request) -> bool:
    """No ``Origin`` (an older browser, a script) or this station's own: anything else is a page
    of another site posting here."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc == host


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class RequireLogin:
    """Only an active operator's session reaches anything but :data:`PUBLIC`; the operator's
    account goes to ``request.state.operator``. And every API call that changes something must
    carry the session's CSRF token in its header (forms are checked by their handler)."""

    def __init__(self, app: ASGIApp, database_url: str):
        self.app = app
        self.database_url = database_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        operator_id = request.session.get("operator")
        account = None
        if isinstance(operator_id, int):
            account = await run_in_threadpool(self._account, operator_id)
        if account is None:
            if operator_id is not None:  # a session of a disabled or deleted operator ends
                request.session.clear()
            await _refuse(scope["path"])(scope, receive, send)
            return
        if _unsafe_api(scope) and not (
            same_origin(request) and csrf_ok(request, request.headers.get(CSRF_HEADER))
        ):
            await forbidden()(scope, receive, send)
            return
        scope.setdefault("state", {})["operator"] = account
        await self.app(scope, receive, send)

    def _account(self, operator_id: int):
        with db.session_scope(self.database_url) as session:
            return operators.active_account(session, operator_id)


def _unsafe_api(scope: Scope) -> bool:
    return scope["method"] in UNSAFE_METHODS and scope["path"].startswith(API_PREFIXES)


def _refuse(path: str) -> Response:
    if path.startswith(API_PREFIXES):
        return JSONResponse({"error": "log in first"}, status_code=401)
    return RedirectResponse("/login", status_code=303)


def forbidden() -> Response:
    return JSONResponse({"error": "refused: missing or wrong CSRF token"}, status_code=403)


class SecurityHeaders:
    """:data:`HEADERS` on every response, and ``no-store`` on everything but static files and
    what says otherwise itself (a crop, kept privately so the next item's shows at once)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(PUBLIC_PREFIXES)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in HEADERS
                ]
                headers += [(name.encode(), value.encode()) for name, value in HEADERS.items()]
                cached = any(name.lower() == b"cache-control" for name, _ in headers)
                if not static and not cached:  # a crop says how long it may be kept
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
