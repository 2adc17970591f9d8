"""The pages in a real browser (Debian's headless Chromium, installed by `make test`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90)


def screenshot(tmp_path: Path, url: str, name: str, height: int, width: int = 1280) -> None:
    """A full-page screenshot, kept in tests/output/ (look at it: boxes are failures)."""
    shot = tmp_path / name
    chromium(tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 15_000
    out = Path(__file__).parent / "output"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / name)


def test_sign_in_link_opens_the_overview_in_a_browser(server: tuple[Server, str, str],
                                                      tmp_path: Path) -> None:
    srv, key, token = server
    httpx.post(srv.url + "/v1/batch", auth=(key, ""), json={"batch": [
        {"type": "track", "userId": "u1", "event": "Booking <Completed>"},
        {"type": "page", "anonymousId": "a1", "name": "Home"},
        {"type": "track", "userId": "u2"}]})
    # The browser follows the sign-in redirect with the session cookie it was just given.
    dom = chromium(tmp_path, "--dump-dom", f"{srv.url}/signin?token={token}").stdout
    assert "Workspace overview" in dom
    assert "missing_event" in dom  # the failed event is listed
    screenshot(tmp_path, f"{srv.url}/overview", "overview.png", 1400)


def test_without_a_session_the_browser_lands_on_sign_in(server: tuple[Server, str, str],
                                                        tmp_path: Path) -> None:
    srv, _, _ = server
    dom = chromium(tmp_path, "--dump-dom", f"{srv.url}/overview").stdout
    assert "Admin token" in dom and "Workspace overview" not in dom


def test_person_page_shows_the_knot_in_a_browser(server: tuple[Server, str, str],
                                                 tmp_path: Path) -> None:
    srv, key, token = server
    batch = [
        {"type": "page", "anonymousId": "web-1", "name": "Home",
         "timestamp": "2026-07-01T09:00:00Z"},
        {"type": "identify", "userId": "u-mina", "anonymousId": "web-1",
         "timestamp": "2026-07-02T09:00:00Z",
         "traits": {"email": "Mina@Example.com", "name": "مینا رحیمی", "city": "กรุงเทพ"}},
        {"type": "track", "userId": "u-mina", "event": "Booking Completed",
         "properties": {"revenue": 120, "note": "<script>alert(1)</script>"},
         "timestamp": "2026-07-03T09:00:00Z"},
    ]
    assert httpx.post(srv.url + "/v1/batch", auth=(key, ""), json={"batch": batch}).is_success
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(srv.url + "/v1/build", headers=auth, json={}).is_success
    pid = httpx.get(srv.url + "/v1/persons", params={"email": "mina@example.com"},
                    headers=auth).json()["person_id"]
    # Sign in, then the lookup form redirects to the person (one browser profile: the cookie).
    chromium(tmp_path, "--dump-dom", f"{srv.url}/signin?token={token}")
    dom = chromium(tmp_path, "--dump-dom", f"{srv.url}/persons?q=mina%40example.com").stdout
    assert pid in dom and "مینا رحیمی" in dom and "Booking Completed" in dom
    assert "<script>alert(1)</script>" not in dom  # escaped
    missing = chromium(tmp_path, "--dump-dom", f"{srv.url}/persons?q=nobody").stdout
    assert "No person matches" in missing
    screenshot(tmp_path, f"{srv.url}/persons/{pid}", "person.png", 1500)


@pytest.mark.parametrize("lang", ["en", "fa", "th"])
def test_survey_page_in_three_languages(server: tuple[Server, str, str], tmp_path: Path,
                                        lang: str) -> None:
    srv, key, token = server
    auth = {"Authorization": f"Bearer {token}"}
    httpx.post(srv.url + "/v1/identify", auth=(key, ""), json={
        "userId": "u-survey", "traits": {"email": "s@example.com"}})
    assert httpx.post(srv.url + "/v1/build", headers=auth, json={}).is_success
    assert httpx.post(srv.url + "/v1/surveys", headers=auth, json={
        "survey_id": "nps", "kind": "nps", "company": "Bowknot Rentals",
        "reasons": ["price", "car", "staff"]}).is_success
    inv = httpx.post(srv.url + "/v1/surveys/nps/invitations", headers=auth,
                     json={"person": "u-survey", "language": lang}).json()
    url = f"{srv.url}/s/{inv['token']}?score=9"
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert f'lang="{lang}"' in dom and ("rtl" in dom) == (lang == "fa")
    screenshot(tmp_path, url, f"survey-{lang}.png", 1000)
    # A phone-sized screen: the 0-10 scale wraps instead of overflowing.
    screenshot(tmp_path, url, f"survey-{lang}-phone.png", 900, width=390)
