"""Headers: the multi-valued, case-insensitive mapping on requests and responses.

In memory for the mapping rules, then through a server: a response middleware
edits a response's headers and the raw bytes on the wire show the result.
"""

from __future__ import annotations

from typing import Any

import pytest

import embedws
from embedws import Headers
from embedws.response import HTTPResponse, text

from .conftest import raw_http, serving


def test_lookup_is_case_insensitive_and_keeps_every_value_in_order() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("X-One", "1"), ("set-cookie", "b=2")])
    assert headers.get("SET-COOKIE") == "a=1"
    assert headers.getall("set-cookie") == ["a=1", "b=2"]
    assert headers.getlist("X-ONE") == ["1"]
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert headers["x-one"] == "1"
    with pytest.raises(KeyError):
        headers["missing"]
    assert "X-ONE" in headers and "nope" not in headers and 1 not in headers
    assert len(headers) == 3
    assert list(headers) == headers.keys() == ["Set-Cookie", "X-One", "set-cookie"]
    assert headers.values() == ["a=1", "1", "b=2"]
    assert headers.items() == [("Set-Cookie", "a=1"), ("X-One", "1"), ("set-cookie", "b=2")]


def test_setting_replaces_every_value_and_adding_keeps_them() -> None:
    headers = Headers({"Vary": "Origin"})
    headers.add("vary", "Cookie")
    assert headers.getall("Vary") == ["Origin", "Cookie"]
    headers["VARY"] = "*"
    assert headers.items() == [("VARY", "*")]
    assert headers.setdefault("vary", "ignored") == "*"
    assert headers.setdefault("X-New", "v") == "v" and headers["x-new"] == "v"
    del headers["x-new"]
    with pytest.raises(KeyError):
        del headers["x-new"]
    headers.add("Vary", "again")
    assert headers.pop("vary") == "*" and "vary" not in headers
    assert headers.pop("vary", "gone") == "gone"
    assert len(headers) == 0


def test_copies_are_independent_and_compare_by_their_pairs() -> None:
    original = Headers([("A", "1")])
    copy = Headers(original)
    copy.add("B", "2")
    assert original.items() == [("A", "1")]
    assert copy != original and Headers(original) == original
    assert original != {"A": "1"}  # only Headers compare equal to Headers
    assert repr(original) == "Headers([('A', '1')])"
    assert Headers().items() == []
    assert Headers.from_raw([(b"X-B", b"caf\xe9")]).items() == [("X-B", "café")]
    assert Headers([("X-B", "café")]).encode() == [(b"X-B", b"caf\xe9")]


def test_a_response_middleware_edits_the_headers_the_client_receives() -> None:
    app = embedws.App("headers")

    @app.get("/")
    def index(request: Any) -> HTTPResponse:
        return text("body", headers=[("X-Drop", "1"), ("Set-Cookie", "a=1")])

    @app.on_response
    def edit(request: Any, response: HTTPResponse) -> None:
        del response.headers["x-drop"]
        response.headers.add("Set-Cookie", "b=2")
        response.headers.setdefault("X-Seen", request.headers.get("x-probe", "none"))

    with serving(app) as server:
        answer = raw_http(
            server.port,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Probe: yes\r\nConnection: close\r\n\r\n",
        )
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"x-drop" not in head
    cookies = [line for line in head.split(b"\r\n") if line.startswith(b"set-cookie:")]
    assert cookies == [b"set-cookie: a=1", b"set-cookie: b=2"]  # both, in order
    assert b"x-seen: yes" in head
    assert answer.endswith(b"\r\n\r\nbody")
