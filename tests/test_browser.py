"""The pages in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright with that
executable — no browser download) loads ``/``, ``/ui/models/{m}`` and ``/docs`` from a real server, runs a profile
and a sweep from the model page, checks every chart's marks against the API's numbers (the job results the page
got) and that the console has no errors, and that no page asks for anything off the server. Screenshots are saved
under ``test-artifacts/browser/`` (git-ignored; CI keeps them as artefacts).

Skips when Playwright or a Chromium executable is absent (``SEPCONV_CHROMIUM`` names another executable).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from sepconv.export.networks import build_network
from sepconv.export.repository.writer import write_model
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.serving import running_server
from tests.test_roofline import check_charts_against

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

MODEL = "mobilenet_v2_0.35_96"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for candidate in (os.environ.get("SEPCONV_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    repo = root / "models"
    write_model(build_network("mobilenet_v2", alpha=0.35, resolution=96).model, repo, MODEL, max_batch=4)
    settings = Settings(repo=repo, trace_dir=root / "traces", profile_max_runs=100, profile_max_gmacs=200)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="sepconv-chromium-")
    with playwright_api.sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                           args=FLAGS, viewport={"width": 1100, "height": 900})
        except Exception as exc:  # noqa: BLE001 - a chromium that cannot start here is a skip, not a failure
            pytest.skip(f"chromium did not start: {exc}")
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class Page:
    """A page with its console errors and every request off the server recorded (and refused)."""

    def __init__(self, context, base: str) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.foreign: list[str] = []
        host = urlparse(base).netloc
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r) -> None:
            url = urlparse(r.request.url)
            if url.scheme in ("data", "blob") or url.netloc == host:
                r.continue_()
            else:
                self.foreign.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"the page asked for something off the server: {self.foreign}"


def _dom_charts(page) -> dict[str, dict]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('svg[data-chart]')].map(svg => [
        svg.dataset.chart, {points: Number(svg.dataset.points), marks: [...svg.querySelectorAll('.mark')].map(m => {
          const a = Object.fromEntries([...m.attributes].map(x => [x.name, x.value]));
          const box = m.getBBox(); a._box = {x: box.x, y: box.y, w: box.width, h: box.height}; return a; })}]))""")


def _check_geometry(charts: dict[str, dict]) -> None:
    """The marks are drawn to scale: bar heights proportional to their values, scatter positions monotonic."""
    bars = [m for m in charts["layer-times"]["marks"] if not m.get("data-fused-into") and float(m["data-value"]) > 0]
    ratios = [m["_box"]["h"] / float(m["data-value"]) for m in bars]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-3)
    for name, xkey, ykey, log in (("roofline", "data-x", "data-y", True), ("sweep", "data-x", "data-y", False)):
        marks = charts[name]["marks"]
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        for a in marks:
            for b in marks:
                if f(float(a[xkey])) < f(float(b[xkey])) - 1e-9:
                    assert a["_box"]["x"] <= b["_box"]["x"] + 1e-6
                if float(a[ykey]) < float(b[ykey]):  # higher values are drawn higher (smaller y)
                    assert a["_box"]["y"] >= b["_box"]["y"] - 1e-6


def _job_result(server: str, job_id: str) -> dict:
    job = httpx.get(f"{server}/v1/profile/jobs/{job_id}", timeout=30).json()
    assert job["state"] == "done", job
    return job["result"]


def test_dashboard_lists_the_model(server: str, browser) -> None:
    p = Page(browser, server)
    p.page.goto(f"{server}/")
    link = p.page.locator(f'a[href="/ui/models/{MODEL}"]')
    link.wait_for(timeout=30_000)
    p.page.wait_for_selector("td .READY", timeout=30_000)
    p.shot("dashboard")
    p.clean()


def test_model_page_runs_a_profile_and_a_sweep(server: str, browser) -> None:
    p = Page(browser, server)
    page = p.page
    page.goto(f"{server}/ui/models/{MODEL}")
    page.wait_for_selector("#no-profile", timeout=30_000)
    assert page.locator("#classify-drop").count() == 1  # the drop box stays
    page.fill("#profile-form input[name=runs]", "5")
    page.click("#profile-run")
    page.wait_for_selector("body[data-profile-done]", timeout=300_000)
    profile = _job_result(server, page.evaluate("document.body.dataset.profileJob"))
    p.shot("model-profile")
    page.fill("#sweep-form input[name=alphas]", "0.35,0.5")
    page.fill("#sweep-form input[name=resolutions]", "96,128")
    page.fill("#sweep-form input[name=runs]", "3")
    page.fill("#sweep-form input[name=budget_ms]", "1000")
    page.click("#sweep-run")
    page.wait_for_selector("body[data-sweep-done]", timeout=300_000)
    sweep = _job_result(server, page.evaluate("document.body.dataset.sweepJob"))
    assert page.locator("#sweep-rows tbody tr").count() == len(sweep["rows"]) == 4
    charts = _dom_charts(page)
    assert set(charts) == {"layer-times", "by-kind", "roofline", "sweep"}
    check_charts_against(charts, profile, sweep)
    _check_geometry(charts)
    assert page.locator("#trace-link").get_attribute("href") == profile["trace_url"]
    assert httpx.get(profile["trace_url"], timeout=30).json()["traceEvents"]
    page.locator("#charts").scroll_into_view_if_needed()
    p.shot("model-profile-and-sweep")
    p.clean()


def test_docs_render_offline(server: str, browser) -> None:
    p = Page(browser, server)
    p.page.goto(f"{server}/docs")
    p.page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    p.page.get_by_text("/v1/profile/sweep", exact=True).wait_for(timeout=30_000)
    p.shot("docs")
    p.clean()
