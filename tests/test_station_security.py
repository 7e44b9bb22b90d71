"""The review station's defences, over HTTP against a real ``digits review-server`` on SQLite and
PostgreSQL: every page and API behind a login, CSRF refused, crops served only as images of items
that exist, wrong passwords limited, cookies and headers as they must be."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from digits.cli.manage import cli
from digits.worker.store import db
from tests.review_jobs import flagged_job, item_ids
from tests.services import BACKENDS, make_database_url
from tests.station import PASSWORD, add_operator, logged_in, running_station

MAX_FAILURES = 3
HTML_CROP = b"\x89PNG\r\n\x1a\n<html><script>alert(document.cookie)</script></html>"


@pytest.fixture(scope="module", params=BACKENDS)
def station(request, tmp_path_factory):
    """One station per backend, with a job of flagged items and three operators."""
    directory = tmp_path_factory.mktemp(f"station-{request.param}")
    url = make_database_url(request.param, request, directory)
    db.upgrade(url)
    job_id = flagged_job(
        url,
        ["one.png", "two.png", "html.png", "ok.png"],
        statuses={"ok.png": "ok", "html.png": "error"},
        data={"html.png": HTML_CROP},
    )
    for name in ("alice", "bob", "mallory"):
        add_operator(url, name)
    env = {"DIGITS_LOGIN_MAX_FAILURES": str(MAX_FAILURES), "DIGITS_LOGIN_WINDOW_S": "60"}
    with running_station(url, directory, env) as running:
        running.job_id = job_id
        running.items = item_ids(url, job_id)
        yield running


def _routes(station) -> list[tuple[str, str]]:
    """(method, path) of every route the application has, an existing item in the path."""
    from starlette.routing import Route

    from digits.worker.config import Settings
    from digits.worker.station.app import create_app

    settings = Settings(database_url=station.database_url, station_secret="x" * 40)
    item = station.items["one.png"]
    found = []
    for route in create_app(settings).routes:
        if isinstance(route, Route):
            path = route.path.replace("{item_id:int}", str(item))
            found += [(method, path) for method in sorted(route.methods - {"HEAD"})]
    return found


def test_every_page_and_api_needs_a_login(station):
    routes = _routes(station)
    assert ("POST", f"/api/items/{station.items['one.png']}/key") in routes  # not vacuous
    public = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz")}
    anonymous = httpx.Client(base_url=station.url)
    for method, path in routes:
        if (method, path) in public:
            continue
        answer = anonymous.request(method, path, json={"value": "1"})
        if path.startswith(("/api/", "/crops/")):
            assert answer.status_code == 401, (method, path, answer.text)
        else:
            assert answer.status_code == 303, (method, path)
            assert answer.headers["location"] == "/login"
    # A forged cookie (not signed with the station's secret) is nobody.
    forged = httpx.Client(base_url=station.url, cookies={"digits_station": "eyJvcGVyYXRvciI6IDF9"})
    assert forged.get("/api/queue").status_code == 401


def test_csrf_is_refused_on_every_change(station):
    client, token = logged_in(station, "alice")
    item = client.get("/api/queue").json()["items"][0]["id"]
    url = f"/api/items/{item}/key"
    assert client.post(url, json={"value": "1"}).status_code == 403
    assert (
        client.post(url, json={"value": "1"}, headers={"x-csrf-token": "wrong"}).status_code == 403
    )
    foreign = {"x-csrf-token": token, "origin": "https://evil.example"}
    assert client.post(url, json={"value": "1"}, headers=foreign).status_code == 403
    assert client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    # Another operator's token is not this session's.
    _, bobs = logged_in(station, "bob")
    assert client.post(url, json={"value": "1"}, headers={"x-csrf-token": bobs}).status_code == 403
    # A login form posted without the form's token is refused too (login CSRF).
    fresh = httpx.Client(base_url=station.url)
    refused = fresh.post("/login", data={"name": "alice", "password": PASSWORD})
    assert refused.status_code == 403
    assert fresh.get("/api/queue").status_code == 401
    # With the token, the keying is taken.
    good = client.post(url, json={"value": "1"}, headers={"x-csrf-token": token})
    assert good.status_code == 200 and good.json()["keyed"]["outcome"] == "final"
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/api/queue").status_code == 401  # the session is gone


def test_crops_are_images_of_items_that_exist_and_nothing_else(station):
    client, _ = logged_in(station, "bob")
    answer = client.get(f"/crops/{station.items['two.png']}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert Image.open(io.BytesIO(answer.content)).format == "PNG"
    # An error item's bytes are HTML behind a PNG signature: never served as they came.
    html = client.get(f"/crops/{station.items['html.png']}")
    assert html.status_code == 404 and b"<script>" not in html.content
    for path in (
        f"/crops/{station.items['ok.png']}",  # the model settled it: no crop kept
        "/crops/999999",
        "/crops/-1",
        "/crops/..%2F..%2Fetc%2Fpasswd",
        "/crops/1/../../etc/passwd",
        "/crops/%2Fetc%2Fpasswd",
        "/crops/one.png",
    ):
        refused = client.get(path)
        assert refused.status_code == 404, path
        assert b"root:" not in refused.content and not refused.content.startswith(b"\x89PNG")


def test_wrong_passwords_are_rate_limited(station):
    def attempt(password: str) -> httpx.Response:
        fresh = httpx.Client(base_url=station.url)
        token = re.search(r'name="csrf_token" value="([^"]+)"', fresh.get("/login").text)[1]
        return fresh.post(
            "/login", data={"name": "mallory", "password": password, "csrf_token": token}
        )

    for _ in range(MAX_FAILURES):
        wrong = attempt("not the password")
        assert wrong.status_code == 401 and "Wrong name or password." in wrong.text
    limited = attempt(PASSWORD)  # the right one, too late
    assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 61
    assert "Too many wrong passwords" in limited.text


def test_sessions_cookies_and_headers(station):
    client = httpx.Client(base_url=station.url)
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    headers = page.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["cache-control"]) == ("DENY", "no-store")
    assert "<script>" not in page.text  # no inline script anywhere
    assert "server" not in headers
    # A disabled operator's session ends at its next request.
    session, _ = logged_in(station, "bob")
    assert session.get("/api/queue").status_code == 200
    env = {"DIGITS_DATABASE_URL": station.database_url}
    assert CliRunner().invoke(cli, ["operator", "disable", "bob"], env=env).exit_code == 0
    assert session.get("/api/queue").status_code == 401
    assert CliRunner().invoke(cli, ["operator", "enable", "bob"], env=env).exit_code == 0


def test_operator_accounts_from_the_command_line(station):
    env = {"DIGITS_DATABASE_URL": station.database_url}
    run = CliRunner().invoke
    short = run(cli, ["operator", "add", "eve", "--password-stdin"], input="short\n", env=env)
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    bad = run(cli, ["operator", "add", "<b>eve", "--password-stdin"], input=PASSWORD, env=env)
    assert bad.exit_code == 1 and "operator name" in bad.output
    again = run(cli, ["operator", "add", "alice", "--password-stdin"], input=PASSWORD, env=env)
    assert again.exit_code == 1 and "exists already" in again.output
    listed = run(cli, ["operator", "list"], env=env).output.split("\n")
    assert "alice\tactive" in listed
