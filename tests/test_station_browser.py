"""The review station end to end in real headless browsers: a real worker reads the jobs and keeps
their flagged crops, operators log in and key them with the keyboard alone, and ``digits results``
shows the values final; a double-keyed job with one disagreement settled by a third operator; a
second browser never shown what the first holds; keys holding HTML shown as text.

DIGITS_SCREENSHOT=docs/review-station.png writes the README's picture of the station;
DIGITS_STATION_MEASURE=FILE writes the scripted operator's figures (items per minute, next-item
times) as JSON (scripts/devtools/measure_station.py runs both).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from digits.cli.manage import cli
from digits.worker.store import db
from tests.review_jobs import operator_id
from tests.services import job_items
from tests.station import PASSWORD, add_operator, browser, running_station

HTML_KEY = "<img src=x onerror=alert(1)>.png"
HTML_SOURCE = "<script>alert(2)</script>"
FLAGGED_WANTED = 22


@pytest.fixture(scope="module")
def jobs(celery_worker, scan_crops):
    """A batch of 30 scans plus one with an HTML key, every uncertain digit flagged (threshold
    1.0), and a double-keyed job of three whose source (a file name, say) is a script."""
    from digits.worker.submission import jobs
    from digits.worker.submission.jobs import Crop

    labels = {key: label for key, _, label in scan_crops[:34]}
    first = [Crop(key, blob) for key, blob, _ in scan_crops[:30]]
    first.append(Crop(HTML_KEY, scan_crops[30][1]))
    labels[HTML_KEY] = scan_crops[30][2]
    plain = celery_worker.submit(first, source="inbox/2026-11-28", review_threshold=1.0)
    double = jobs.submit(
        [Crop(key, blob) for key, blob, _ in scan_crops[31:34]],
        dataclasses.replace(celery_worker.settings, review_threshold=1.0),
        source=HTML_SOURCE,
        app=celery_worker.app,
        double_key=True,
    )
    for plan in (plain, double):
        celery_worker.wait(plan.job_id)
    return plain.job_id, double.job_id, labels


@pytest.fixture(scope="module")
def station(celery_worker, jobs, tmp_path_factory):
    for name in ("alice", "bob", "carol"):
        add_operator(celery_worker.database_url, name)
    with running_station(celery_worker.database_url, tmp_path_factory.mktemp("station")) as s:
        yield s


def _flagged(url: str, job_id: str) -> list:
    return [item for item in job_items(url, job_id) if item.status == "needs_review"]


def test_the_worker_keeps_exactly_the_flagged_crops(celery_worker, jobs):
    plain, double, _ = jobs
    items = job_items(celery_worker.database_url, plain)
    flagged = [item for item in items if item.status == "needs_review"]
    assert len(flagged) >= FLAGGED_WANTED, [i.confidence for i in items]
    assert all(item.crop_sha256 for item in flagged)
    assert not any(item.crop_sha256 for item in items if item.status == "ok")
    assert len(_flagged(celery_worker.database_url, double)) == 3
    status = CliRunner().invoke(
        cli, ["status", plain], env={"DIGITS_DATABASE_URL": celery_worker.database_url}
    )
    assert "reviewing, 31/31 processed" in status.output
    assert f"{len(flagged)} awaiting a person" in status.output


def _log_in(driver, station, name: str) -> None:
    """The login form by keyboard: the name field has the focus."""
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{station.url}/login")
    driver.switch_to.active_element.send_keys(name, Keys.TAB, PASSWORD, Keys.ENTER)
    _wait(driver, "return document.body.dataset.item !== undefined", f"{name}'s station")


def _wait(driver, script: str, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def _shown(driver) -> tuple[int | None, str | None]:
    """The item on screen (its crop decoded), and its key as the page shows it."""
    item = driver.execute_script("return document.body.dataset.item || ''")
    if not item:
        return None, None
    return int(item), driver.find_element("id", "key").text


def _key(driver, value: str) -> None:
    """Type the value and Enter, then wait for the next item (or the empty queue) on screen."""
    from selenium.webdriver.common.keys import Keys

    before = driver.execute_script("return document.body.dataset.item")
    driver.switch_to.active_element.send_keys(value, Keys.ENTER)
    _wait(
        driver,
        f"const shown = document.body.dataset.item; return (shown && shown !== {json.dumps(before)})"
        " || !document.getElementById('empty').hidden",
        "the next item",
    )


def _held(url: str, name: str) -> set[int]:
    with db.session_scope(url) as session:
        statement = select(db.ItemLock.item_id).where(
            db.ItemLock.operator_id == operator_id(url, name), db.ItemLock.until > db.utcnow()
        )
        return set(session.scalars(statement))


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


def test_operators_key_flagged_items_by_keyboard_and_results_show_them(
    celery_worker, jobs, station
):
    plain, double, labels = jobs
    url = celery_worker.database_url
    flagged = {item.id: item.key for item in _flagged(url, plain)}
    alice, bob = browser(), browser()
    try:
        _log_in(alice, station, "alice")
        _log_in(bob, station, "bob")
        bobs = _held(url, "bob")
        assert len(bobs) == 2 and not bobs & _held(url, "alice")
        assert _shown(bob)[0] in bobs and _shown(alice)[0] not in bobs
        screenshot = os.environ.get("DIGITS_SCREENSHOT")
        # Alice keys everything of the batch that bob does not hold, keyboard only.
        keyed, started = [], time.monotonic()
        while True:
            item, key = _shown(alice)
            if item not in flagged:
                break
            assert item not in bobs  # a second browser's items never reach her
            if key == HTML_KEY:  # shown as text: no element made of it, no script run
                assert (
                    alice.execute_script("return document.querySelectorAll('#key *').length") == 0
                )
                _no_alert(alice)
            if screenshot and len(keyed) == 6:  # the README's picture, mid-shift
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                alice.save_screenshot(screenshot)
            _key(alice, str(labels[key]))
            keyed.append(item)
        seconds = time.monotonic() - started
        assert len(keyed) == len(flagged) - 2 >= FLAGGED_WANTED - 2 >= 20
        timings = alice.execute_script("return window.digitsStation.timings")
        # Then the double-keyed job: alice first, right every time.
        for _ in range(3):
            item, key = _shown(alice)
            assert key in labels and item not in flagged
            assert alice.find_element("id", "job-source").text == f"({HTML_SOURCE})"
            assert alice.execute_script("return document.scripts.length") == 1  # station.js
            _no_alert(alice)
            _key(alice, str(labels[key]))
        assert alice.find_element("id", "empty").is_displayed()  # waits for other people now
        # Bob keys the two he held, then the double-keyed items: one of them wrong.
        wrong = None
        for _ in range(5):
            item, key = _shown(bob)
            value = labels[key]
            if item not in flagged and wrong is None:
                wrong, value = item, (value + 1) % 10
            _key(bob, str(value))
        _wait(bob, "return !document.getElementById('empty').hidden", "bob's queue empty")
        # Their disagreement goes to a third operator, who reads it right.
        alice.find_element("id", "logout").click()
        _wait(alice, "return document.getElementById('login') !== null", "the login form")
        _log_in(alice, station, "carol")  # alice's browser, carol's login
        item, key = _shown(alice)
        assert item == wrong
        _key(alice, str(labels[key]))
        _no_alert(alice)
    finally:
        alice.quit()
        bob.quit()
    _record(len(keyed), seconds, timings)
    env = {"DIGITS_DATABASE_URL": url}
    for job_id in (plain, double):
        rows = json.loads(
            CliRunner().invoke(cli, ["results", job_id, "--format", "json"], env=env).output
        )
        for row in rows:
            source = "operator" if row["status"] == "needs_review" else "model"
            assert (row["source"], row["final"]) == (
                source,
                str(row["digit"] if source == "model" else labels[row["key"]]),
            )
        status = json.loads(CliRunner().invoke(cli, ["status", job_id, "--json"], env=env).output)
        assert (status["status"], status["awaiting_review"]) == ("done", 0)
    with db.session_scope(url) as session:
        keyings = session.scalar(select(func.count()).where(db.Keying.item_id == wrong))
    assert keyings == 3


def _record(count: int, seconds: float, timings: list[float]) -> None:
    """The scripted operator's figures: printed, and written where DIGITS_STATION_MEASURE says."""
    ordered = sorted(timings)
    figures = {
        "items": count,
        "seconds": round(seconds, 2),
        "items_per_minute": round(60 * count / seconds, 1),
        "next_item_ms_p50": round(ordered[len(ordered) // 2], 1),
        "next_item_ms_p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "next_item_samples": len(ordered),
    }
    print(f"\nscripted operator: {json.dumps(figures)}")
    target = os.environ.get("DIGITS_STATION_MEASURE")
    if target:
        path = Path(target)
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps([*runs, figures], indent=2) + "\n")
