"""Serving a program's web UI: ``app.static(uri, folder_or_file)``.

A request's path is resolved inside the folder, and anything that would leave
it gets 404 with no detail: ``..`` segments (the router already refuses them
with 400, raw or with encoded dots; a ``path`` parameter never holds one),
backslashes, absolute paths and drive letters, NUL bytes, and symlinks whose
target is outside the folder (unless ``follow_external_symlinks``). Files are
sent by [`embedws.response.file()`][embedws.response.file]: streamed, with ``ETag`` and
``Last-Modified``, 304 and ``Range`` answers.

This module reads the file system (``realpath``, ``stat``): its handler runs
off the event loop in thread mode (a ``def`` HTTP handler), or in a greenlet
in greenlet mode, where a stat costs microseconds.
"""

from __future__ import annotations

import logging
import ntpath
import os

from .errors import NotFound
from .request import Request
from .response import HTTPResponse, file, redirect

__all__ = ["StaticFiles", "resolve"]

logger = logging.getLogger("embedws.server")


def resolve(root: str, relative: str, *, follow_external_symlinks: bool = False) -> str | None:
    """The real path of ``relative`` inside the folder ``root``, or ``None`` if it leaves it.

    Args:
        root: the folder, already a real path (``os.path.realpath``).
        relative: the decoded path the request asks for, below ``root``.
        follow_external_symlinks: serve what symlinks inside ``root`` point
            to even when it is outside.
    """
    if "\\" in relative or "\0" in relative or relative.startswith("/"):
        return None
    if ntpath.splitdrive(relative)[0] or os.path.isabs(relative):
        return None
    parts = [part for part in relative.split("/") if part]
    if any(part in (".", "..") for part in parts):
        return None
    candidate = os.path.join(root, *parts)
    real = os.path.realpath(candidate)
    if not follow_external_symlinks and not _inside(real, root):
        return None
    return real


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # another drive (Windows)
        return False


class StaticFiles:
    """The handler of an ``app.static`` route: a folder, or one file.

    Thread contract: called on a handler thread (or greenlet) per request;
    holds no state that changes.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        index: str | None = "index.html",
        follow_external_symlinks: bool = False,
        cache_control: str | None = "no-cache",
        content_type: str | None = None,
    ) -> None:
        self.root = os.path.realpath(location)
        if not os.path.exists(self.root):
            raise FileNotFoundError(f"app.static: {os.fspath(location)!r} does not exist")
        self.is_file = os.path.isfile(self.root)
        self.index = index
        self.follow_external_symlinks = follow_external_symlinks
        self.cache_control = cache_control
        self.content_type = content_type
        self.__name__ = "static"

    def __call__(self, request: Request, path: str = "") -> HTTPResponse:
        if self.is_file:
            return self._file(self.root)
        target = resolve(self.root, path, follow_external_symlinks=self.follow_external_symlinks)
        if target is None:
            logger.debug("refused a static path that leaves its folder: %r", path)
            raise NotFound("file not found")
        if os.path.isdir(target):
            if not request.path.endswith("/"):
                # So that the page's relative links resolve inside the folder.
                query = f"?{request.query_string}" if request.query_string else ""
                return redirect(request.path + "/" + query, status=301)
            if self.index is None:
                raise NotFound("file not found")
            index = resolve(
                self.root,
                f"{path.rstrip('/')}/{self.index}" if path else self.index,
                follow_external_symlinks=self.follow_external_symlinks,
            )
            if index is None:
                raise NotFound("file not found")
            target = index
        return self._file(target)

    def _file(self, path: str) -> HTTPResponse:
        return file(path, mime_type=self.content_type, cache_control=self.cache_control)

    def __repr__(self) -> str:
        return f"<StaticFiles {self.root!r}>"
