"""The package as users get it: build the sdist and the wheel, install the wheel into a fresh
virtual environment (its dependencies from PyPI), and serve the echo example from there.

Slow (a build, a fresh venv and an install from PyPI), so it runs in the slow step of .ci/run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

import embedws

from .conftest import MS
from .examples.conftest import URL_LINE, Lines

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(*argv: str | Path, cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, timeout=600_000 * MS)
    return out


def test_build_makes_an_sdist_and_a_wheel_with_the_package_version(dist: Path) -> None:
    (wheel,) = dist.glob("embedws-*.whl")
    (sdist,) = dist.glob("embedws-*.tar.gz")
    version = embedws.__version__
    assert wheel.name == f"embedws-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = HeaderParser().parsestr(
            archive.read(f"embedws-{version}.dist-info/METADATA").decode()
        )
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    assert f"embedws-{version}.dist-info/licenses/LICENSE" in names
    assert "embedws/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "docs/"))]
    classifiers = metadata.get_all("Classifier") or []
    assert "License :: OSI Approved :: MIT License" not in classifiers  # the expression says it
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert {"docs", "test", "dev"} <= set(metadata.get_all("Provides-Extra") or [])
    with tarfile.open(sdist) as archive:
        members = {
            member.name.split("/", 1)[1] for member in archive.getmembers() if "/" in member.name
        }
    assert {"LICENSE", "README.md", "pyproject.toml", "embedws/__init__.py"} <= members


def test_the_wheel_installed_in_a_fresh_venv_serves_the_echo_example(
    dist: Path, tmp_path: Path
) -> None:
    (wheel,) = dist.glob("embedws-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, timeout=120_000 * MS)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path, timeout=600_000 * MS)

    # The example and its page, away from the checkout: only the installed embedws is importable.
    program = tmp_path / "program"
    program.mkdir()
    shutil.copy(ROOT / "examples" / "echo.py", program / "echo.py")
    shutil.copytree(ROOT / "examples" / "pages" / "echo", program / "pages" / "echo")
    found = json.loads(
        _run(
            python,
            "-c",
            "import embedws, json; print(json.dumps([embedws.__file__, embedws.__version__]))",
            cwd=program,
            timeout=60_000 * MS,
        )
    )
    assert Path(found[0]).is_relative_to(venv), found
    assert found[1] == embedws.__version__

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    with subprocess.Popen(
        [str(python), "echo.py", "--port", "0"],
        cwd=program,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = Lines(proc.stdout, "echo-stdout"), Lines(proc.stderr, "echo-stderr")
        try:
            line = stdout.next_line(lambda line: bool(URL_LINE.search(line)))
            match = URL_LINE.search(line)
            assert match is not None, stderr.text()
            port = int(match.group(1))
            with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10_000 * MS) as ws:
                ws.send("from the wheel")
                assert ws.recv(timeout=10_000 * MS) == "from the wheel"
                ws.send(b"\x00\x01")
                assert ws.recv(timeout=10_000 * MS) == b"\x00\x01"
            page_url = f"http://127.0.0.1:{port}/"
            with urllib.request.urlopen(page_url, timeout=10_000 * MS) as page:
                assert page.status == 200
                assert b"<html" in page.read().lower()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30_000 * MS)
            stdout.join(10_000 * MS)
            stderr.join(10_000 * MS)
    assert code == 0, stderr.text()
    assert "Traceback" not in stderr.text(), stderr.text()
