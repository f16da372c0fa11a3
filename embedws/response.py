"""HTTP responses returned by HTTP handlers and middleware (pure: no I/O).

Every helper takes ``status=`` and ``headers=``. Thread contract: build a
response in any thread; it is sent by the event loop.
"""

from __future__ import annotations

import html as htmllib
import json as jsonlib
import mimetypes
import os
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from .errors import NotFound
from .request import Headers

__all__ = [
    "HTTPResponse",
    "empty",
    "error_response",
    "file",
    "html",
    "json",
    "raw",
    "redirect",
    "text",
]

HeadersLike = Mapping[str, str] | Headers | Iterable[tuple[str, str]] | None


class HTTPResponse:
    """An HTTP response: ``status``, ``headers`` (a :class:`Headers`) and ``body``.

    ``on_response`` middleware may change ``headers`` (also on the 101 of a
    websocket upgrade, where the body is ignored).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: HeadersLike = None,
        content_type: str | None = None,
    ) -> None:
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.status = int(status)
        self.headers = Headers(headers)
        if content_type is not None and "content-type" not in self.headers:
            self.headers["Content-Type"] = content_type

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def __repr__(self) -> str:
        return f"<HTTPResponse {self.status} {self.content_type}>"


def text(body: str, status: int = 200, headers: HeadersLike = None) -> HTTPResponse:
    """A ``text/plain`` response."""
    return HTTPResponse(body, status, headers, "text/plain; charset=utf-8")


def html(body: str, status: int = 200, headers: HeadersLike = None) -> HTTPResponse:
    """A ``text/html`` response."""
    return HTTPResponse(body, status, headers, "text/html; charset=utf-8")


def json(
    body: Any,
    status: int = 200,
    headers: HeadersLike = None,
    *,
    dumps: Any = None,
) -> HTTPResponse:
    """A JSON response; ``dumps`` replaces :func:`json.dumps`."""
    encoded = (dumps or _compact_dumps)(body)
    return HTTPResponse(encoded, status, headers, "application/json")


def raw(
    body: bytes,
    status: int = 200,
    headers: HeadersLike = None,
    content_type: str = "application/octet-stream",
) -> HTTPResponse:
    """A response with these bytes."""
    return HTTPResponse(body, status, headers, content_type)


def redirect(to: str, status: int = 302, headers: HeadersLike = None) -> HTTPResponse:
    """A redirect to ``to``."""
    response = HTTPResponse(b"", status, headers, "text/html; charset=utf-8")
    response.headers["Location"] = to
    return response


def empty(status: int = 204, headers: HeadersLike = None) -> HTTPResponse:
    """A response with no body."""
    return HTTPResponse(b"", status, headers)


def file(
    path: str | os.PathLike[str],
    status: int = 200,
    headers: HeadersLike = None,
    *,
    mime_type: str | None = None,
    filename: str | None = None,
) -> HTTPResponse:
    """A response with a file's content, its type guessed from its name.

    The file is read when this is called: call it from a sync handler (which
    runs off the event loop) for large files.

    Raises:
        NotFound: there is no such file.
    """
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFound(f"file not found: {os.fspath(path)}") from exc
    guessed = mime_type or mimetypes.guess_type(os.fspath(path))[0] or "application/octet-stream"
    if guessed.startswith("text/") and "charset" not in guessed:
        guessed += "; charset=utf-8"
    response = HTTPResponse(content, status, headers, guessed)
    if filename is not None:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _compact_dumps(value: Any) -> str:
    return jsonlib.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_response(
    status: int,
    message: str,
    error_format: str | None = None,
    headers: HeadersLike = None,
) -> HTTPResponse:
    """The body of an HTTP error in the route's ``error_format`` (json, html, text)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    if error_format == "json":
        body = _compact_dumps({"description": title, "status": status, "message": message})
        response = HTTPResponse(body, status, headers, "application/json")
    elif error_format == "html":
        page = (
            "<!DOCTYPE html><html><head><meta charset=utf-8>"
            f"<title>{status} {htmllib.escape(title)}</title></head><body>"
            f"<h1>{status} {htmllib.escape(title)}</h1><p>{htmllib.escape(message)}</p>"
            "</body></html>"
        )
        response = HTTPResponse(page, status, headers, "text/html; charset=utf-8")
    else:
        response = HTTPResponse(
            f"{status} {title}: {message}\n", status, headers, "text/plain; charset=utf-8"
        )
    return response
