"""The review station: a small Starlette application where operators key what the model could not
read, the crop in front of them (``digits review-server``, served by uvicorn).

One page, keyboard first (templates/station.html, static/station.js): the page asks the JSON API
for the items this operator holds (the one shown and the next, loaded ahead, :mod:`..store.reviews`),
shows the crop large with the model's reading and alternatives, and posts what is typed. The
crops come from their own endpoint, re-encoded as PNG (:func:`..store.crops.item_image`).
Logins, CSRF and headers: :mod:`.security`. Database work runs in the thread pool: the sessions
are SQLAlchemy's synchronous ones, one per request.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from digits.worker.config import Settings
from digits.worker.station import security
from digits.worker.store import crops, db, operators, reviews

HERE = Path(__file__).resolve().parent
MAX_FORM_FIELD = 1024


def create_app(settings: Settings) -> Starlette:
    """The station for ``settings``' database (migrated already: the command does it)."""
    station = _Station(settings)
    routes = [
        Route("/", station.page, methods=["GET"]),
        Route("/login", station.login_page, methods=["GET"]),
        Route("/login", station.login, methods=["POST"]),
        Route("/logout", station.logout, methods=["POST"]),
        Route("/api/queue", station.queue, methods=["GET"]),
        Route("/api/items/{item_id:int}/key", station.key, methods=["POST"]),
        Route("/crops/{item_id:int}", station.crop, methods=["GET"]),
        Route("/healthz", station.health, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(security.SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=security.secret(settings),
            session_cookie=security.SESSION_COOKIE,
            max_age=settings.session_max_age_s,
            same_site="strict",
            https_only=settings.station_https,
        ),
        Middleware(security.RequireLogin, database_url=settings.database_url),
    ]
    return Starlette(routes=routes, middleware=middleware)


class _Station:
    def __init__(self, settings: Settings):
        self.settings = settings
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True
        )
        self.templates = Jinja2Templates(env=environment)

    def _run(self, work, *args):
        """``work(session, *args)`` in one transaction, in the thread pool."""

        def unit():
            with db.session_scope(self.settings.database_url) as session:
                return work(session, *args)

        return run_in_threadpool(unit)

    # --- pages ---------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if isinstance(request.session.get("operator"), int):
            return RedirectResponse("/", status_code=303)
        return self._login_form(request, None, 200)

    def _login_form(self, request: Request, error: str | None, status: int, headers=None):
        context = {"csrf": security.csrf_token(request), "error": error}
        return self.templates.TemplateResponse(
            request, "login.html", context, status_code=status, headers=headers
        )

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=8)
        if not security.same_origin(request) or not security.csrf_ok(
            request, _field(form, security.CSRF_FIELD)
        ):
            return self._login_form(request, "The form had expired: please log in again.", 403)
        name, password = _field(form, "name"), _field(form, "password")
        address = security.client_address(request)
        log_in = functools.partial(
            operators.log_in,
            name=name,
            password=password,
            address=address,
            max_failures=self.settings.login_max_failures,
            window_s=self.settings.login_window_s,
        )
        try:
            account = await self._run(lambda session: log_in(session))
        except operators.TooManyFailures as exc:
            message = f"Too many wrong passwords: try again in {exc.retry_s} s."
            headers = {"retry-after": str(exc.retry_s)}
            return self._login_form(request, message, 429, headers)
        if account is None:
            return self._login_form(request, "Wrong name or password.", 401)
        request.session.clear()  # a fresh session, and a fresh CSRF token, for the new login
        request.session["operator"] = account.id
        request.session["name"] = account.name
        security.csrf_token(request)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        if not security.same_origin(request) or not security.csrf_ok(
            request, _field(form, security.CSRF_FIELD)
        ):
            return security.forbidden()
        await self._run(reviews.release, request.state.operator.id)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def page(self, request: Request) -> Response:
        context = {
            "csrf": security.csrf_token(request),
            "operator": request.state.operator.name,
            "lock_s": self.settings.review_lock_s,
        }
        return self.templates.TemplateResponse(request, "station.html", context)

    async def health(self, _request: Request) -> Response:
        return PlainTextResponse("ok")

    # --- the API the page's script calls -------------------------------------------------------

    def _held(self, session, operator_id: int) -> dict:
        held = reviews.claim(session, operator_id, self.settings.review_lock_s)
        return {"items": reviews.shown(session, held), "counts": reviews.queue_counts(session)}

    async def queue(self, request: Request) -> Response:
        """The items this operator holds now (the one to show first), topped up from the queue."""
        return JSONResponse(await self._run(self._held, request.state.operator.id))

    async def key(self, request: Request) -> Response:
        """One keying: ``{"value": "7"}`` or ``{"unreadable": true}``; the answer carries the
        items this operator holds afterwards, so the page moves on without another request."""
        operator_id = request.state.operator.id
        item_id = request.path_params["item_id"]
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        value = body.get("value") if isinstance(body, dict) else None
        unreadable = isinstance(body, dict) and body.get("unreadable") is True
        if not unreadable and not isinstance(value, str):
            return JSONResponse({"error": "send a value or unreadable"}, status_code=400)

        def work(session):
            keyed = reviews.key(session, operator_id, item_id, value, unreadable)
            return {"keyed": keyed.__dict__, **self._held(session, operator_id)}

        try:
            return JSONResponse(await self._run(work))
        except reviews.KeyingRefused as exc:
            held = await self._run(self._held, operator_id)
            return JSONResponse({"error": str(exc), **held}, status_code=exc.status)

    async def crop(self, request: Request) -> Response:
        """The item's kept crop as a PNG: the id is the only thing taken from the request."""
        try:
            png = await self._run(crops.item_image, request.path_params["item_id"])
        except crops.NoCrop:
            return JSONResponse({"error": "no such crop"}, status_code=404)
        headers = {"cache-control": "private, max-age=600", "content-disposition": "inline"}
        return Response(png, media_type=crops.SERVED_TYPE, headers=headers)


def _field(form, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FORM_FIELD] if isinstance(value, str) else ""
