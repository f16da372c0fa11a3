"""Run the Autobahn|Testsuite fuzzing client against embedws echo servers.

    python compliance/autobahn.py --cases quick --mode all
    python compliance/autobahn.py --cases full --mode all --summary compliance/SUMMARY.md

For each mode it starts ``compliance/echo_server.py MODE`` as a subprocess on 127.0.0.1, runs
``wstest -m fuzzingclient`` against it, stops it, and reads ``compliance/reports/MODE/index.json``.
A case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its close behaviour is
OK or INFORMATIONAL. The exit status is 0 when every case of every embedws mode passed, 1 when
one did not (or a run broke), 2 when the harness could not run at all.

``--mode`` takes ``async``, ``thread``, ``greenlet``, ``trio`` (the async app inside
``trio.run``), ``all`` (the four in turn) or
``websockets`` (the ``websockets`` library's own asyncio server, a reference whose failures are
listed but never change the exit status), or several of them separated by commas.

Autobahn|Testsuite needs Python 2.7: the harness finds pyenv's 2.7.18 (or ``$AUTOBAHN_PYTHON2``)
and installs ``compliance/autobahn-requirements.txt`` into ``compliance/.venv-autobahn`` the
first time, and again only when that file changes.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from echo_server import CONFIG as SERVER_CONFIG

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ECHO_SERVER = HERE / "echo_server.py"
REQUIREMENTS = HERE / "autobahn-requirements.txt"
VENV = HERE / ".venv-autobahn"
VENV_PYTHON = VENV / "bin" / "python"
WSTEST = VENV / "bin" / "wstest"
STAMP = VENV / ".requirements-sha1"
REPORTS = HERE / "reports"
HOST = "127.0.0.1"

CASE_SETS: dict[str, tuple[str, ...]] = {
    "quick": ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"),
    "full": ("*",),
}
EMBEDWS_MODES = ("async", "thread", "greenlet", "trio")
REFERENCE_MODE = "websockets"
MODE_CHOICES = (*EMBEDWS_MODES, REFERENCE_MODE, "all")

PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASSING_CLOSE = frozenset({"OK", "INFORMATIONAL"})
MISSING = "MISSING"  # a case that was asked for but is not in index.json
COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

PYTHON2_VERSION = "2.7.18"
SETUP_TIMEOUT = 900.0  # seconds for one step of the Autobahn install
RUN_TIMEOUT = {"quick": 300.0, "full": 3600.0}  # seconds for one mode's wstest run
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 45.0  # the echo server's own graceful stop is bounded at 30 s
KILL_TIMEOUT = 10.0
PROGRESS_INTERVAL = 30.0

# Run by Autobahn's Python 2: the case ids a spec selects, resolved by Autobahn itself.
_RESOLVE_CASES = """\
import json, sys
import autobahn, autobahntestsuite
from autobahntestsuite.case import Cases, CaseBasename, CaseCategories, CaseSetname, \\
    CaseSubCategories
from autobahntestsuite.caseset import CaseSet
spec = json.load(open(sys.argv[1]))
case_set = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
json.dump({"cases": case_set.parseSpecCases(spec), "autobahn": autobahn.version,
           "testsuite": autobahntestsuite.version}, sys.stdout)
"""


class HarnessError(Exception):
    """The harness could not do what it had to (install, start, run or read)."""


# Autobahn|Testsuite installation ------------------------------------------------------


def python2() -> Path:
    """The Python 2.7 that runs Autobahn: ``$AUTOBAHN_PYTHON2``, else pyenv's 2.7.18."""
    explicit = os.environ.get("AUTOBAHN_PYTHON2")
    if explicit:
        return Path(explicit)
    root = os.environ.get("PYENV_ROOT", "")
    if not root:
        try:
            found = subprocess.run(
                ["pyenv", "root"], capture_output=True, text=True, timeout=30, check=True
            )
            root = found.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = str(Path.home() / ".pyenv")
    path = Path(root) / "versions" / PYTHON2_VERSION / "bin" / "python"
    if not path.exists():
        raise HarnessError(
            f"Autobahn|Testsuite needs Python 2.7 and {path} does not exist: "
            f"`pyenv install {PYTHON2_VERSION}`, or set AUTOBAHN_PYTHON2"
        )
    return path


def _run_logged(command: list[str], log: IO[str], timeout: float = SETUP_TIMEOUT) -> None:
    """Run ``command`` with its output appended to ``log``; raise if it fails."""
    line = shlex.join(command)
    log.write(f"$ {line}\n")
    log.flush()
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"`{line}` took over {timeout:.0f} s; see {log.name}") from None
    except OSError as exc:
        raise HarnessError(f"`{line}` could not run: {exc}") from None
    if result.returncode != 0:
        raise HarnessError(f"`{line}` failed (exit status {result.returncode}); see {log.name}")


def ensure_autobahn() -> None:
    """Install Autobahn|Testsuite into ``VENV`` unless it is there with these requirements."""
    wanted = hashlib.sha1(REQUIREMENTS.read_bytes()).hexdigest()
    if WSTEST.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    REPORTS.mkdir(parents=True, exist_ok=True)
    log_path = REPORTS / "setup.log"
    print(
        f"Installing Autobahn|Testsuite into {_rel(VENV)} (about a minute; log: {_rel(log_path)})"
    )
    with log_path.open("w") as log:
        if not VENV_PYTHON.exists():
            shutil.rmtree(VENV, ignore_errors=True)
            py2 = str(python2())
            try:
                subprocess.run(
                    [py2, "-m", "virtualenv", "--version"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
            except (OSError, subprocess.SubprocessError):
                _run_logged([py2, "-m", "pip", "install", "virtualenv<20.22"], log)
            _run_logged([py2, "-m", "virtualenv", str(VENV)], log)
        _run_logged([str(VENV_PYTHON), "-m", "pip", "install", "-r", str(REQUIREMENTS)], log)
        _run_logged([str(WSTEST), "--autobahnversion"], log, timeout=60)
    STAMP.write_text(wanted + "\n")


@dataclass(frozen=True)
class AutobahnInfo:
    cases: list[str]
    autobahn: str
    testsuite: str


def resolve_cases(patterns: tuple[str, ...]) -> AutobahnInfo:
    """The case ids that ``patterns`` select, as Autobahn resolves them, and its versions."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    spec_path = REPORTS / "cases-spec.json"
    spec_path.write_text(json.dumps({"cases": list(patterns), "exclude-cases": []}))
    try:
        found = subprocess.run(
            [str(VENV_PYTHON), "-c", _RESOLVE_CASES, str(spec_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        data = json.loads(found.stdout)
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"could not list Autobahn's cases: {exc.stderr.strip()}") from None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise HarnessError(f"could not list Autobahn's cases: {exc}") from None
    return AutobahnInfo(data["cases"], data["autobahn"], data["testsuite"])


# The echo server ------------------------------------------------------------------------


class EchoServer:
    """``echo_server.py MODE`` as a subprocess: started on entry, stopped on exit, always."""

    def __init__(self, mode: str, log_path: Path) -> None:
        self.mode = mode
        self.log_path = log_path
        self.port = 0
        self.returncode: int | None = None
        self.killed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> EchoServer:
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER), self.mode],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            bufsize=0,
            start_new_session=True,  # Ctrl-C reaches the harness, which stops the server
        )
        try:
            self.port = self._read_port(self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_port(self, proc: subprocess.Popen[bytes]) -> int:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in data:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(
                        f"the {self.mode} echo server did not report its port within "
                        f"{SERVER_START_TIMEOUT:.0f} s; see {_rel(self.log_path)}"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    proc.wait(KILL_TIMEOUT)
                    raise HarnessError(
                        f"the {self.mode} echo server exited (status {proc.returncode}) "
                        f"before it listened; see {_rel(self.log_path)}"
                    )
                data += chunk
        first = data.split(b"\n", 1)[0].strip()
        if not first.isdigit():
            raise HarnessError(f"the {self.mode} echo server printed {first!r}, not a port")
        return int(first)

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the graceful stop takes too long. Idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    self.killed = True
                    proc.wait(KILL_TIMEOUT)
            self.returncode = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


# One mode -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    case: str
    behavior: str
    behavior_close: str | None
    remote_close_code: int | None
    report: Path | None

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING and (
            self.behavior_close is None or self.behavior_close in PASSING_CLOSE
        )

    def details(self) -> dict[str, Any]:
        """The case's own report JSON (empty if there is none)."""
        if self.report is None:
            return {}
        try:
            data: dict[str, Any] = json.loads(self.report.read_text())
        except (OSError, ValueError):
            return {}
        return data


@dataclass
class ModeResult:
    mode: str
    revision: str = "unknown"  # embedws's git revision when the mode's server started
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> bool:
        return self.mode == REFERENCE_MODE

    @property
    def failures(self) -> list[CaseResult]:
        return [case for case in self.cases if not case.passed]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    @property
    def label(self) -> str:
        return f"{self.mode} (reference)" if self.reference else self.mode

    def counts(self) -> Counter[str]:
        return Counter(case.behavior for case in self.cases)

    def bad_close(self) -> int:
        return sum(
            1
            for case in self.cases
            if case.behavior_close is not None and case.behavior_close not in PASSING_CLOSE
        )


def agent_name(mode: str) -> str:
    return f"embedws-{mode}" if mode in EMBEDWS_MODES else mode


def run_fuzzingclient(spec_path: Path, outdir: Path, total: int, mode: str, timeout: float) -> None:
    """Run wstest's fuzzing client on ``spec_path``, printing progress; raise if it fails."""
    log_path = outdir / "wstest.log"
    started = time.monotonic()
    deadline = started + timeout
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(WSTEST), "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=outdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(
                        f"wstest did not finish within {timeout:.0f} s; see {_rel(log_path)}"
                    )
                try:
                    proc.wait(min(PROGRESS_INTERVAL, remaining))
                    break
                except subprocess.TimeoutExpired:
                    done = log_path.read_bytes().count(b"Running test case ID")
                    elapsed = time.monotonic() - started
                    print(f"  {mode}: {done}/{total} cases started, {elapsed:.0f} s", flush=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(KILL_TIMEOUT)
    if proc.returncode != 0:
        raise HarnessError(f"wstest exited with status {proc.returncode}; see {_rel(log_path)}")


def read_results(outdir: Path, agent: str, expected: list[str]) -> list[CaseResult]:
    """Every expected case's result from ``index.json``; absent ones as MISSING."""
    index_path = outdir / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {_rel(index_path)}: {exc}") from None
    entries: dict[str, Any] = index.get(agent, {})
    results = []
    for case in expected:
        entry = entries.get(case)
        if entry is None:
            results.append(CaseResult(case, MISSING, None, None, None))
            continue
        report = entry.get("reportfile")
        results.append(
            CaseResult(
                case=case,
                behavior=str(entry.get("behavior")),
                behavior_close=entry.get("behaviorClose"),
                remote_close_code=entry.get("remoteCloseCode"),
                report=outdir / report if report else None,
            )
        )
    return results


def server_log_problems(log_path: Path) -> int:
    """How many lines of the server's log are errors or tracebacks."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    return sum(
        1 for line in lines if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    )


def run_mode(mode: str, case_set: str, expected: list[str], timeout: float) -> ModeResult:
    """Serve ``mode``, fuzz it, stop it, read the results. Errors end up in ``.error``."""
    result = ModeResult(mode, revision=git_revision())
    outdir = REPORTS / mode
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    server_log = outdir / "server.log"
    agent = agent_name(mode)
    print(f"== {mode}: {len(expected)} cases ({case_set}), git {result.revision}", flush=True)
    started = time.monotonic()
    try:
        with EchoServer(mode, server_log) as server:
            spec = {
                "outdir": str(outdir),
                "servers": [{"agent": agent, "url": server.url}],
                "cases": list(CASE_SETS[case_set]),
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
            spec_path = outdir / "fuzzingclient.json"
            spec_path.write_text(json.dumps(spec, indent=2) + "\n")
            run_fuzzingclient(spec_path, outdir, len(expected), mode, timeout)
            if not server.alive():
                raise HarnessError(f"the echo server died during the run; see {_rel(server_log)}")
        result.seconds = time.monotonic() - started
        result.cases = read_results(outdir, agent, expected)
        if server.killed:
            result.warnings.append(
                f"the server did not stop within {SERVER_STOP_TIMEOUT:.0f} s of SIGTERM"
            )
        elif server.returncode != 0:
            result.warnings.append(f"the server exited with status {server.returncode}")
    except HarnessError as exc:
        result.seconds = time.monotonic() - started
        result.error = str(exc)
    problems = server_log_problems(server_log)
    if problems:
        result.warnings.append(f"{problems} error/traceback lines in {_rel(server_log)}")
    outcome = result.error or f"{len(result.failures)} failing"
    print(f"  {mode}: {len(result.cases)} cases in {result.seconds:.0f} s, {outcome}", flush=True)
    return result


# Reporting ------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _columns(results: list[ModeResult]) -> list[str]:
    seen = {name for result in results for name in result.counts()}
    return [*COLUMNS, *sorted(seen - set(COLUMNS))]


def table_rows(results: list[ModeResult]) -> tuple[list[str], list[list[str]]]:
    columns = _columns(results)
    header = ["mode", "cases", *columns, "bad close", "failing", "time"]
    rows = []
    for result in results:
        counts = result.counts()
        failing = "ERROR" if result.error else str(len(result.failures))
        rows.append(
            [
                result.label,
                str(len(result.cases)),
                *(str(counts.get(name, 0)) for name in columns),
                str(result.bad_close()),
                failing,
                f"{result.seconds:.0f} s",
            ]
        )
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe_failure(case: CaseResult) -> list[str]:
    """What the case's report says: its description, result and the close codes seen."""
    details = case.details()
    closing = (
        f"close codes: local {details.get('localCloseCode')}, "
        f"remote {details.get('remoteCloseCode')}, "
        f"{'clean' if details.get('wasClean') else 'not clean'}"
    )
    if details.get("wasNotCleanReason"):
        closing += f" ({details['wasNotCleanReason']})"
    close = "" if case.behavior_close is None else f" / close {case.behavior_close}"
    lines = [f"{case.case}: {case.behavior}{close}"]
    if details:
        lines += [
            f"description: {details.get('description')}",
            f"expectation: {details.get('expectation')}",
            f"result: {details.get('result')}",
            f"resultClose: {details.get('resultClose')}",
            closing,
        ]
    elif case.remote_close_code is not None:
        lines.append(f"remote close code: {case.remote_close_code}")
    if case.report is not None:
        lines.append(f"report: {_rel(case.report)}")
    return lines


def print_report(results: list[ModeResult]) -> None:
    header, rows = table_rows(results)
    print()
    print(format_table(header, rows))
    for result in results:
        if result.error:
            print(f"\n{result.label}: ERROR: {result.error}")
        for warning in result.warnings:
            print(f"\n{result.label}: warning: {warning}")
        if result.failures:
            print(f"\n{result.label}: {len(result.failures)} failing cases")
            for case in result.failures:
                first, *rest = describe_failure(case)
                print(f"  {first}")
                for line in rest:
                    print(f"      {line}")


def git_revision() -> str:
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_summary(
    path: Path, results: list[ModeResult], case_set: str, info: AutobahnInfo, argv: list[str]
) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    config = ", ".join(f"`{key}={value!r}`" for key, value in SERVER_CONFIG.items())
    patterns = ", ".join(f"`{p}`" for p in CASE_SETS[case_set])
    header, rows = table_rows(results)
    seen = {result.revision for result in results if not result.reference}
    if len(seen) == 1:
        revisions = seen.pop()
    else:  # the tree changed during the run
        revisions = ", ".join(f"{r.mode} at {r.revision}" for r in results if not r.reference)
    lines = [
        "# Autobahn|Testsuite compliance",
        "",
        f"- Date: {now}",
        f"- Command: `python compliance/autobahn.py {shlex.join(argv)}`",
        f"- Cases: {case_set} ({patterns}: {len(info.cases)} cases)",
        f"- embedws {_version('embedws')} (git {revisions}), "
        f"websockets {_version('websockets')}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"- Autobahn|Testsuite {info.testsuite} (autobahn {info.autobahn}), fuzzing client",
        f"- Echo server config: {config}",
        "",
        "A case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its close "
        "behaviour is OK or INFORMATIONAL. The websockets row, when present, is the "
        "`websockets` library's own asyncio server, for reference.",
        "",
        markdown_table(header, rows),
        "",
        "## Failures",
        "",
    ]
    failing = [result for result in results if not result.ok or result.warnings]
    if not failing:
        lines.append("None.")
    for result in failing:
        lines.append(f"### {result.label}")
        lines.append("")
        if result.error:
            lines.append(f"- ERROR: {result.error}")
        lines += [f"- warning: {warning}" for warning in result.warnings]
        for case in result.failures:
            first, *rest = describe_failure(case)
            lines.append(f"- **{first}**")
            lines += [f"  - {line}" for line in rest]
        lines.append("")
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# Command line ---------------------------------------------------------------------------


def parse_modes(value: str) -> list[str]:
    """``async,thread`` -> the modes in order, ``all`` expanded, duplicates dropped."""
    modes: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if name not in MODE_CHOICES:
            choices = ", ".join(MODE_CHOICES)
            raise argparse.ArgumentTypeError(f"unknown mode {name!r} (choose from {choices})")
        for mode in EMBEDWS_MODES if name == "all" else (name,):
            if mode not in modes:
                modes.append(mode)
    return modes


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite fuzzing client against embedws echo servers.",
        epilog="Reports go to compliance/reports/MODE/ (index.html to browse them).",
    )
    parser.add_argument("--cases", choices=sorted(CASE_SETS), default="quick")
    parser.add_argument(
        "--mode",
        type=parse_modes,
        default=list(EMBEDWS_MODES),
        help="async, thread, greenlet, all, websockets (reference), or a comma-separated list",
    )
    parser.add_argument("--summary", type=Path, help="write a markdown summary to this file")
    parser.add_argument(
        "--timeout", type=float, help="seconds allowed for one mode's run (default: by --cases)"
    )
    args = parser.parse_args(args_list)
    modes: list[str] = args.mode
    timeout: float = args.timeout or RUN_TIMEOUT[args.cases]

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    started = time.monotonic()
    try:
        ensure_autobahn()
        info = resolve_cases(CASE_SETS[args.cases])
        results = [run_mode(mode, args.cases, info.cases, timeout) for mode in modes]
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    print_report(results)
    if args.summary is not None:
        write_summary(args.summary, results, args.cases, info, args_list)
        print(f"\nSummary written to {args.summary}")
    checked = [result for result in results if not result.reference]
    passed = all(result.ok for result in checked)
    elapsed = time.monotonic() - started
    verdict = "PASS" if passed else "FAIL"
    print(f"\n{verdict}: {len(checked)} embedws modes, {elapsed:.0f} s in all")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
