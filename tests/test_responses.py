"""Route registration errors, the PUT/DELETE/PATCH shortcuts, and file() edge cases.

Registration is checked in memory (the error names the mistake); the routes and
files are then served, and what a client receives on the wire is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import embedws
from embedws.errors import RouteError
from embedws.response import HTTPResponse, file, text

from .conftest import raw_http, serving, status_of


def request(port: int, method: str, path: str, extra: str = "") -> bytes:
    return raw_http(
        port,
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        f"Connection: close\r\n{extra}\r\n".encode(),
    )


def head_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[0].lower()


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda app: app.add_route("not callable", "/x"), "is not callable"),
        (lambda app: app.add_websocket_route(lambda r, ws: None, "/x", mode="process"), "mode"),
        (lambda app: app.get("/x", error_format="yaml")(lambda r: None), "error_format"),
        (lambda app: app.route("/x", methods=("FETCH",))(lambda r: None), "['FETCH']"),
    ],
)
def test_a_route_registered_wrong_is_refused_with_the_reason(register: Any, message: str) -> None:
    app = embedws.App("wrong")
    with pytest.raises(RouteError, match=message.replace("[", r"\[")):
        register(app)
    assert "0 routes" in repr(app)


def test_put_delete_and_patch_routes_answer_only_their_method() -> None:
    app = embedws.App("verbs")

    @app.put("/item")
    def put(request: Any) -> HTTPResponse:
        return text("put")

    @app.delete("/item")
    def delete(request: Any) -> HTTPResponse:
        return text("deleted")

    @app.patch("/item")
    async def patch(request: Any) -> HTTPResponse:
        return text("patched")

    with serving(app) as server:
        for method, body in (("PUT", b"put"), ("DELETE", b"deleted"), ("PATCH", b"patched")):
            answer = request(server.port, method, "/item")
            assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n" + body)
        assert status_of(request(server.port, "POST", "/item")) == 405


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[embedws.sync.Server, Path]]:
    (tmp_path / "report.txt").write_text("numbers")
    (tmp_path / "folder").mkdir()
    app = embedws.App("files")

    @app.get("/download")
    def download(request: Any) -> HTTPResponse:
        return file(tmp_path / "report.txt", filename="r.txt", cache_control="no-cache")

    @app.get("/folder")
    def folder(request: Any) -> HTTPResponse:
        return file(tmp_path / "folder")

    with serving(app) as server:
        yield server, tmp_path


def test_a_download_names_its_file_and_its_cache_policy(files: Any) -> None:
    server, _ = files
    answer = request(server.port, "GET", "/download")
    head = head_of(answer)
    assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\nnumbers")
    assert b'content-disposition: attachment; filename="r.txt"' in head
    assert b"cache-control: no-cache" in head
    assert b"content-type: text/plain; charset=utf-8" in head


def test_a_folder_is_no_file(files: Any) -> None:
    server, _ = files
    answer = request(server.port, "GET", "/folder")
    assert status_of(answer) == 404
    assert b"folder" not in answer  # the answer names no path


@pytest.mark.parametrize(
    ("condition", "status"),
    [
        ("If-None-Match: *", 304),  # any version the client holds is current
        ("If-Modified-Since: not a date", 200),  # unreadable: the whole file
        ("If-Modified-Since: Wed, 21 Oct 2099 07:28:00", 200),  # no zone: ignored
    ],
)
def test_conditional_downloads(files: Any, condition: str, status: int) -> None:
    server, _ = files
    answer = request(server.port, "GET", "/download", condition + "\r\n")
    assert status_of(answer) == status
    assert answer.endswith(b"\r\n\r\nnumbers") == (status == 200)
