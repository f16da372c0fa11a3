"""HTTP responses returned by HTTP handlers and middleware (pure: no I/O).

Every helper takes ``status=`` and ``headers=``. Thread contract: build a
response in any thread; it is sent by the event loop.
"""

from __future__ import annotations

import email.utils
import html as htmllib
import json as jsonlib
import logging
import mimetypes
import os
import stat as statlib
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, NamedTuple

from .errors import NotFound
from .request import Headers

__all__ = [
    "UNSATISFIABLE",
    "FilePlan",
    "FileResponse",
    "HTTPResponse",
    "empty",
    "error_response",
    "file",
    "html",
    "parse_range",
    "json",
    "raw",
    "redirect",
    "text",
]

logger = logging.getLogger("embedws.server")

HeadersLike = Mapping[str, str] | Headers | Iterable[tuple[str, str]] | None


class HTTPResponse:
    """An HTTP response: ``status``, ``headers`` (a `Headers`) and ``body``.

    ``on_response`` middleware may change ``headers`` (also on the 101 of a
    websocket upgrade, where the body is ignored).

    Thread contract: build it on any thread and return it from a handler or
    middleware; once returned, the server owns it and it must not change.
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
    """A ``text/plain`` response.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    return HTTPResponse(body, status, headers, "text/plain; charset=utf-8")


def html(body: str, status: int = 200, headers: HeadersLike = None) -> HTTPResponse:
    """A ``text/html`` response.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    return HTTPResponse(body, status, headers, "text/html; charset=utf-8")


def json(
    body: Any,
    status: int = 200,
    headers: HeadersLike = None,
    *,
    dumps: Any = None,
) -> HTTPResponse:
    """A JSON response; ``dumps`` replaces `json.dumps()`.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    encoded = (dumps or _compact_dumps)(body)
    return HTTPResponse(encoded, status, headers, "application/json")


def raw(
    body: bytes,
    status: int = 200,
    headers: HeadersLike = None,
    content_type: str = "application/octet-stream",
) -> HTTPResponse:
    """A response with these bytes.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    return HTTPResponse(body, status, headers, content_type)


def redirect(to: str, status: int = 302, headers: HeadersLike = None) -> HTTPResponse:
    """A redirect to ``to``.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    response = HTTPResponse(b"", status, headers, "text/html; charset=utf-8")
    response.headers["Location"] = to
    return response


def empty(status: int = 204, headers: HeadersLike = None) -> HTTPResponse:
    """A response with no body.

    Thread contract: a pure function of its arguments; call it from any thread.
    """
    return HTTPResponse(b"", status, headers)


def file(
    path: str | os.PathLike[str],
    status: int = 200,
    headers: HeadersLike = None,
    *,
    mime_type: str | None = None,
    filename: str | None = None,
    cache_control: str | None = None,
) -> FileResponse:
    """A response with a file's content, its type guessed from its name.

    The file is not read here: the event loop streams it in chunks when it
    sends the response (constant memory per download), with ``ETag`` and
    ``Last-Modified``, answering conditional requests with 304 and ``Range``
    requests with 206 (or 416).

    Args:
        path: the file.
        status: the status of a whole-file answer.
        headers: more headers.
        mime_type: the ``Content-Type`` (default: guessed from the name).
        filename: offer the file as a download with this name.
        cache_control: a ``Cache-Control`` header value (``"no-cache"``...).

    Raises:
        NotFound: there is no such file, or it is not a regular file. The
            answer names no path; the path goes to the log at DEBUG.
    """
    try:
        stat = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        logger.debug("no file to send at %s: %s", os.fspath(path), exc)
        raise NotFound("file not found") from None
    if not statlib.S_ISREG(stat.st_mode):
        logger.debug("not a regular file: %s", os.fspath(path))
        raise NotFound("file not found")
    guessed = mime_type or mimetypes.guess_type(os.fspath(path))[0] or "application/octet-stream"
    if guessed.startswith("text/") and "charset" not in guessed:
        guessed += "; charset=utf-8"
    response = FileResponse(
        os.fspath(path), stat.st_size, stat.st_mtime_ns, status, headers, guessed
    )
    if filename is not None:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if cache_control is not None:
        response.headers["Cache-Control"] = cache_control
    return response


class FileResponse(HTTPResponse):
    """A file's content, streamed from disk by the event loop when sent.

    ``body`` is empty: the bytes are read in chunks as the client takes them.
    `plan()` decides what to send for a request (200, 206, 304 or 416).
    Made by `file()`. Thread contract: as `HTTPResponse`.
    """

    __slots__ = ("etag", "last_modified", "mtime_ns", "path", "size")

    def __init__(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        status: int = 200,
        headers: HeadersLike = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(b"", status, headers, content_type)
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        # A strong validator: the same file changes size or time when it changes.
        self.etag = f'"{mtime_ns:x}-{size:x}"'
        self.last_modified = email.utils.formatdate(mtime_ns / 1e9, usegmt=True)

    def plan(self, method: str, request_headers: Headers) -> FilePlan:
        """What to send for this request: status, headers, and which bytes."""
        validators = [
            ("ETag", self.etag),
            ("Last-Modified", self.last_modified),
            ("Accept-Ranges", "bytes"),
        ]
        if self.status == 200 and _not_modified(self, request_headers):
            return FilePlan(304, validators, 0, 0)
        ranged = request_headers.get("range")
        if self.status == 200 and method == "GET" and ranged is not None:
            if_range = request_headers.get("if-range")
            if if_range is None or if_range.strip() in (self.etag, self.last_modified):
                wanted = parse_range(ranged, self.size)
                if wanted is UNSATISFIABLE:
                    return FilePlan(
                        416, [*validators, ("Content-Range", f"bytes */{self.size}")], 0, 0
                    )
                if isinstance(wanted, tuple):
                    start, end = wanted
                    content_range = f"bytes {start}-{end}/{self.size}"
                    return FilePlan(
                        206, [*validators, ("Content-Range", content_range)], start, end - start + 1
                    )
        return FilePlan(self.status, validators, 0, self.size)

    def __repr__(self) -> str:
        return f"<FileResponse {self.status} {self.size} bytes>"


class FilePlan(NamedTuple):
    """What `FileResponse.plan()` decided: send ``length`` bytes from ``offset``.

    Thread contract: an immutable value; read it on any thread.
    """

    status: int
    headers: list[tuple[str, str]]
    offset: int
    length: int


#: What `parse_range()` returns for a range that no byte of the file satisfies.
UNSATISFIABLE = "unsatisfiable"


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """The byte range ``(first, last)`` (inclusive) a ``Range`` header asks of ``size`` bytes.

    Returns:
        The range; `UNSATISFIABLE` when no byte of it exists (416);
        ``None`` when the header is to be ignored (not ``bytes=``, malformed,
        or several ranges, which this server answers with the whole file, as
        RFC 9110 §14.2 allows).

    Thread contract: a pure function; call it from any thread.
    """
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)  # the last N bytes
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # malformed
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1)


def _not_modified(response: FileResponse, request_headers: Headers) -> bool:
    """RFC 9110 §13.1.2 and §13.1.3: If-None-Match first, else If-Modified-Since."""
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        # Weak comparison: W/"x" matches "x".
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return response.etag in tags
    if_modified_since = request_headers.get("if-modified-since")
    if if_modified_since is not None:
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return response.mtime_ns // 10**9 <= int(since.timestamp())
    return False


def _compact_dumps(value: Any) -> str:
    return jsonlib.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_response(
    status: int,
    message: str,
    error_format: str | None = None,
    headers: HeadersLike = None,
) -> HTTPResponse:
    """The body of an HTTP error in the route's ``error_format`` (json, html, text).

    Thread contract: a pure function of its arguments; call it from any thread.
    """
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
