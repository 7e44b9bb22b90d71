"""The review station as the tests meet it: a real ``digits review-server`` process, accounts made
with ``digits operator add``, HTTP clients and headless Chromium browsers (Debian's ``chromium``
and ``chromium-driver``, through Selenium)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from digits.cli.manage import cli
from tests.services import unavailable

PASSWORD = "correct horse battery"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def add_operator(database_url: str, name: str, password: str = PASSWORD) -> None:
    env = {"DIGITS_DATABASE_URL": database_url}
    result = CliRunner().invoke(
        cli, ["operator", "add", name, "--password-stdin"], input=password + "\n", env=env
    )
    assert result.exit_code == 0, result.output


@dataclass
class Station:
    url: str
    database_url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_station(
    database_url: str, directory: Path, env: dict | None = None
) -> Iterator[Station]:
    """``digits review-server`` on a free loopback port, until the block ends."""
    import httpx

    from digits.cli.devtools.local import free_port

    port = free_port()
    log_path = directory / "station.log"
    environment = {
        **os.environ,
        "DIGITS_DATABASE_URL": database_url,
        "DIGITS_STATION_SECRET_FILE": str(directory / "station.key"),
        **(env or {}),
    }
    command = [sys.executable, "-m", "digits.cli.manage", "review-server", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    station = Station(f"http://127.0.0.1:{port}", database_url, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"review-server exited:\n{station.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{station.url}/healthz", timeout=1).text == "ok":
                    break
            assert time.monotonic() < deadline, f"review-server never answered:\n{station.log()}"
            time.sleep(0.1)
        yield station
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def logged_in(station: Station, name: str, password: str = PASSWORD):
    """An httpx client with a session, and the session's CSRF token (from the page)."""
    import re

    import httpx

    client = httpx.Client(base_url=station.url, timeout=10)
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = client.post("/login", data={"name": name, "password": password, "csrf_token": token})
    assert answer.status_code == 303, answer.text
    page = client.get("/").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    return client, csrf


def browser():
    """A headless Chromium driven by chromedriver: both Debian's, nothing downloaded."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not shutil.which(
        "chromium"
    ):
        unavailable("chromium and chromium-driver not installed (apt-get install them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,820",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
