"""Hostile pages in a real browser against a loopback server with default settings.

Chromium maps the foreign name ``evil.example`` to 127.0.0.1, so a page the
"attacker" serves there is, for the browser, a page of another site: the
cross-site websocket hijacking and DNS rebinding attempts are the real ones.
"""

from __future__ import annotations

from typing import Any

import pytest

import embedws
from embedws.response import HTTPResponse, html

from .chromium import Driver, find_driver, texts
from .conftest import echo_handlers, serving

pytestmark = pytest.mark.browser

MAP_EVIL = ["--host-resolver-rules=MAP evil.example 127.0.0.1, MAP other.example 127.0.0.1"]

PROBE = """<!DOCTYPE html><html><body><p id="result">pending</p><script>
  const out = document.getElementById("result");
  function done(text) { out.textContent = text; out.className = "done"; }
  const ws = new WebSocket(%r);
  ws.onopen = () => ws.send("hi");
  ws.onmessage = (e) => done("echo:" + e.data);
  ws.onerror = () => done("refused");
</script></body></html>"""


@pytest.fixture(scope="module")
def driver() -> Driver:
    return find_driver()


@pytest.fixture
def victim() -> Any:
    """An embedws app with default settings: an echo websocket and its own probe page."""
    app = embedws.App("victim")
    app.add_websocket_route(echo_handlers()[0], "/ws")

    @app.get("/")
    def own_page(request: Any) -> HTTPResponse:
        return html(PROBE % f"ws://{request.host}/ws")

    with serving(app) as server:
        yield server


@pytest.fixture
def attacker() -> Any:
    """Another site's server: ``/target?url=ws://...`` is a page that aims there."""
    app = embedws.App("attacker", config={"ALLOWED_HOSTS": "*"})

    @app.get("/target")
    def target(request: Any) -> HTTPResponse:
        return html(PROBE % request.args.get("url"))

    with serving(app) as server:
        yield server


def probe(driver: Driver, page: str) -> str:
    """What the page saw: ``echo:hi`` when its websocket worked, ``refused`` if not."""
    results = driver.run(page, [{"waitFor": "#result.done"}, {"texts": "#result"}], args=MAP_EVIL)
    return texts(results)[0]


def test_a_page_of_another_site_cannot_open_a_websocket(
    driver: Driver, victim: Any, attacker: Any
) -> None:
    page = f"http://evil.example:{attacker.port}/target?url=ws://127.0.0.1:{victim.port}/ws"
    assert probe(driver, page) == "refused"


def test_the_apps_own_page_gets_in_and_a_page_from_another_loopback_port_does_not(
    driver: Driver, victim: Any, attacker: Any
) -> None:
    assert probe(driver, f"http://127.0.0.1:{victim.port}/") == "echo:hi"
    assert probe(driver, f"http://localhost:{victim.port}/") == "echo:hi"  # another name of it
    # Another local program's page (a dev server, `python -m http.server`...): refused.
    page = f"http://localhost:{attacker.port}/target?url=ws://127.0.0.1:{victim.port}/ws"
    assert probe(driver, page) == "refused"


def test_a_page_from_another_loopback_port_gets_in_once_opted_in(
    driver: Driver, attacker: Any
) -> None:
    app = embedws.App("dev", config={"WEBSOCKET_ORIGINS": ["loopback"]})
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server:
        page = f"http://localhost:{attacker.port}/target?url=ws://127.0.0.1:{server.port}/ws"
        assert probe(driver, page) == "echo:hi"
        page = f"http://evil.example:{attacker.port}/target?url=ws://127.0.0.1:{server.port}/ws"
        assert probe(driver, page) == "refused"


FORM = """<!DOCTYPE html><html><body>
<form method="post" action="%s" enctype="%s"><input name="all" value="yes">
<button id="go" type="submit">go</button></form></body></html>"""


@pytest.mark.parametrize("enctype", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_form_on_another_site_changes_nothing(driver: Driver, enctype: str) -> None:
    deleted: list[str] = []
    victim = embedws.App("local-api")

    @victim.post("/api/delete")
    def delete(request: Any) -> HTTPResponse:
        deleted.append(request.body.decode())
        return html("<p id='result'>deleted</p>")

    @victim.get("/")
    def own_form(request: Any) -> HTTPResponse:
        return html(FORM % ("/api/delete", enctype))

    attacker = embedws.App("forms", config={"ALLOWED_HOSTS": "*"})

    @attacker.get("/form")
    def foreign_form(request: Any) -> HTTPResponse:
        return html(FORM % (request.args.get("action"), enctype))

    with serving(victim) as api, serving(attacker) as evil:
        target = f"http://127.0.0.1:{api.port}/api/delete"
        for origin in (f"http://evil.example:{evil.port}", f"http://localhost:{evil.port}"):
            results = driver.run(
                f"{origin}/form?action={target}",
                [{"click": "#go"}, {"waitFor": "body", "text": "WEBSOCKET_ORIGINS"}],
                args=MAP_EVIL,
            )
            assert all(r.get("ok", True) for r in results)
        assert deleted == []
        # The app's own page may post its own form.
        driver.run(
            f"http://127.0.0.1:{api.port}/",
            [{"click": "#go"}, {"waitFor": "#result", "text": "deleted"}],
        )
    assert len(deleted) == 1 and "all" in deleted[0]


def test_dns_rebinding_is_refused(driver: Driver, victim: Any, attacker: Any) -> None:
    # The victim's page under the foreign name: refused outright...
    results = driver.run(f"http://evil.example:{victim.port}/", [{"texts": "body"}], args=MAP_EVIL)
    [loaded] = [r for r in results if r.get("step") == "goto"]
    assert loaded["status"] == 403
    assert "ALLOWED_HOSTS" in texts(results)[0]
    # ... and so is a websocket opened under that name.
    page = f"http://evil.example:{attacker.port}/target?url=ws://evil.example:{victim.port}/ws"
    assert probe(driver, page) == "refused"


def test_websocket_origins_and_allowed_hosts_open_exactly_what_they_name(
    driver: Driver, attacker: Any
) -> None:
    app = embedws.App(
        "opened",
        config={
            "WEBSOCKET_ORIGINS": [f"http://evil.example:{attacker.port}"],
            "ALLOWED_HOSTS": ["evil.example"],
        },
    )
    app.add_websocket_route(echo_handlers()[0], "/ws")
    with serving(app) as server:
        named = f"http://evil.example:{attacker.port}/target?url="
        # the origin it names, under the host it names: in
        assert probe(driver, named + f"ws://evil.example:{server.port}/ws") == "echo:hi"
        # a loopback origin it does not name: out (the list replaces the default)
        other = f"http://localhost:{attacker.port}/target?url="
        assert probe(driver, other + f"ws://127.0.0.1:{server.port}/ws") == "refused"
        # the named origin, under a host it does not name: out
        assert probe(driver, named + f"ws://other.example:{server.port}/ws") == "refused"
