"""Job logs: one format for every ``rlmt`` command, a first and a last line of rlmt's own, libraries quiet.

Every Snakemake rule runs one ``rlmt ...`` command with its stdout and stderr in
``results/logs/<rule>/...log``. :func:`begin` runs once per command, from the CLI's callback
(:mod:`rlmt.cli`), before any stage code is imported; :func:`finish` runs when the command's
context closes, whatever its outcome. Between them:

* **One format**, on stderr, for every Python logger: ``2026-12-08 10:00:00 INFO rlmt.tracking: ...``.
  MLflow's loggers are left unconfigured by MLflow (``MLFLOW_CONFIGURE_LOGGING=false``) so they
  use it too; DeepSpeed's logger, which writes to stdout in its own format, is routed here; Python
  warnings are logged (``py.warnings``).
* **The story**: the first line names the command and its arguments (stage, cell, inputs,
  outputs); :mod:`rlmt.tracking` adds the MLflow run, the input digests and the settings, and
  records what the command wrote; the last line says what it wrote (or how it failed) and how long
  it took. The command's own prints (stdout) are line-buffered, so they land in order.
* **The level**: ``rlmt --log-level`` (``debug``, ``info``, ``warning``, ``error``), else the config's
  ``tracking.log_level`` (:func:`level_from_config`), else ``info``.
* **Library noise** below ``debug``: MLflow's system-metrics notices, its store migrations
  (alembic), DeepSpeed's accelerator guess, and deprecation warnings (``DeprecationWarning``,
  ``PendingDeprecationWarning``, ``FutureWarning``) are not logged; at ``debug`` they are.
* **Progress bars** stay bars on a terminal. In a log file (stderr is not a terminal) each bar
  refreshes at most every :data:`PROGRESS_INTERVAL_S` seconds (tqdm's ``TQDM_MININTERVAL``, read
  when tqdm is first imported, so child processes inherit it) and each redraw becomes a line of
  its own (:class:`ProgressLines`) instead of carriage returns on one endless line.

Everything :func:`begin` changes in the process (handlers, levels, filters, ``sys.stderr``,
environment) :func:`finish` puts back, so commands invoked in-process (tests) leave no trace.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "info"
PROGRESS_INTERVAL_S = 30
LOGGER = "rlmt"

# logger -> the level it is held at unless the job logs at debug
QUIET_LOGGERS = {
    "mlflow.system_metrics": logging.WARNING,  # "Started monitoring system metrics", "Skip logging GPU metrics"
    "mlflow.store": logging.WARNING,  # "Creating initial MLflow database tables..." on a new store
    "alembic": logging.WARNING,  # the MLflow store's schema migrations, on every new SQLite store
    "sqlalchemy": logging.WARNING,
    "huey": logging.WARNING,
    "httpx2": logging.WARNING,  # one INFO line per request of the openai SDK: thousands in a judge job's log
    "httpx": logging.WARNING,
}
# loggers too chatty even for debug (matplotlib's font search alone is hundreds of lines)
ALWAYS_AT_LEAST = {"matplotlib": logging.INFO, "PIL": logging.INFO}
# messages of library loggers that only state a guess, by logger name
QUIET_MESSAGES = {"DeepSpeed": re.compile(r"Setting (ds_)?accelerator to")}
LIBRARY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# environment for this process's libraries and for child processes (launcher ranks)
ENV_DEFAULTS = {"MLFLOW_CONFIGURE_LOGGING": "false"}
ENV_PROGRESS_IN_FILE = {"TQDM_MININTERVAL": str(PROGRESS_INTERVAL_S), "TQDM_MAXINTERVAL": str(PROGRESS_INTERVAL_S),
                        "TQDM_POSITION": "0"}  # position 0: no cursor moves between nested bars

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ProgressLines:
    """A stderr for a log file: progress-bar redraws become periodic lines.

    A terminal redraws a bar in place: tqdm writes a carriage return, then the bar's new state. In a
    file those states pile up on one line. Here a write that starts with a carriage return is one
    redraw, and becomes a line of its own (cursor-movement escapes and padding removed) when it is a
    bar's first or at least `interval` seconds after that bar's last line (a bar is known by the text
    before its first digit, its description); the redraws between are held back, and the last one
    held is written when the bar finishes (the newline a finished bar writes). A redraw that only
    clears the line is dropped. Every other write passes through unchanged, and everything else
    (``fileno``, ``buffer``, ``isatty``...) is the wrapped stream's.
    """

    def __init__(self, stream, interval: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self._stream, self._interval, self._clock = stream, interval, clock
        self._last: dict[str, tuple[float, str]] = {}  # bar -> when its last line was written, and that line
        self._held: str | None = None  # the latest redraw not written
        self._after_redraw = False  # the last write was a redraw (written or held)

    def write(self, text: str) -> int:
        if text.startswith("\r") or (text and not _ANSI.sub("", text)):
            line = _ANSI.sub("", text).replace("\r", "").rstrip()
            if line:
                bar, now = re.split(r"\d", line, maxsplit=1)[0].strip(), self._clock()
                if bar in self._last and now - self._last[bar][0] < self._interval:
                    self._held = line if line != self._last[bar][1] else None
                else:
                    self._stream.write(line + "\n")
                    self._last[bar], self._held = (now, line), None
            self._after_redraw = bool(line)
            return len(text)
        after_redraw, self._after_redraw = self._after_redraw, False
        if after_redraw and text == "\n":  # a finished bar's closing newline: write its last state
            if self._held is not None:
                self._stream.write(self._held + "\n")
                self._held = None
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _RouteToRoot(logging.Filter):
    """On a library logger that has its own handler and format (DeepSpeed's, on stdout): hand its
    records to the root logger's handlers instead, dropping the ones that only state a guess."""

    def __init__(self, quiet: re.Pattern | None, job: "JobLog"):
        super().__init__()
        self.quiet, self.job = quiet, job

    def filter(self, record: logging.LogRecord) -> bool:
        if self.quiet is not None and self.job.level > logging.DEBUG and self.quiet.search(record.getMessage()):
            return False
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        return False


class _TrailingNewline(logging.Filter):
    """Drop the newline a formatted Python warning ends with (the handler adds one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = record.msg.rstrip("\n")
        return True


def parse_level(name: str | None) -> int:
    """``debug`` / ``info`` / ``warning`` / ``error`` (any case) -> the logging level."""
    if name is None or name.lower() not in LEVELS:
        raise ValueError(f"log level {name!r}: allowed {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


def _out_arguments(args: list[str]) -> list[str]:
    """The values of the command line's ``--out`` options (what a command without tracking writes)."""
    found = []
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--out="):
            found.append(arg.split("=", 1)[1])
    return found


@dataclass
class JobLog:
    """The logging state of one ``rlmt`` command (see the module docstring)."""

    command: str
    args: list[str]
    level: int
    level_given: bool  # set on the command line: a config's tracking.log_level does not override it
    started: float = field(default_factory=time.monotonic)
    outputs: dict[str, str] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _handler: logging.Handler | None = None
    _root_level: int = logging.NOTSET

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(LOGGER)

    # ------------------------------------------------------------------ setting up and putting back

    def install(self) -> None:
        root = logging.getLogger()
        stream = sys.stderr
        if not _isatty(stream):
            stream = ProgressLines(stream)
            self._swap(sys, "stderr", stream)
            for name, value in ENV_PROGRESS_IN_FILE.items():
                self._setenv(name, value)
        if not _isatty(sys.stdout) and hasattr(sys.stdout, "reconfigure"):
            try:
                buffered = sys.stdout.line_buffering
                sys.stdout.reconfigure(line_buffering=True)
                self._undo.append(lambda out=sys.stdout: out.reconfigure(line_buffering=buffered))
            except (AttributeError, ValueError, OSError):  # a stream that cannot change its buffering
                pass
        for name, value in ENV_DEFAULTS.items():
            self._setenv(name, value)
        self._handler = handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        root.addHandler(handler)
        self._undo.append(lambda: root.removeHandler(handler))
        self._root_level = root.level  # a host that already logs more (a test's caplog) keeps its records
        for name in ("", LOGGER, *QUIET_LOGGERS, *ALWAYS_AT_LEAST):
            logger = logging.getLogger(name or None)
            self._undo.append(lambda lg=logger, lv=logger.level: lg.setLevel(lv))
        for name, pattern in QUIET_MESSAGES.items():
            library, route = logging.getLogger(name), _RouteToRoot(pattern, self)
            library.addFilter(route)
            self._undo.append(lambda lib=library, r=route: lib.removeFilter(r))
        saved = warnings.catch_warnings()  # the filters and showwarning, put back (and their cache reset) on exit
        saved.__enter__()
        self._undo.append(lambda: saved.__exit__(None, None, None))
        if not _capturing_warnings():
            logging.captureWarnings(True)
            self._undo.append(lambda: logging.captureWarnings(False))
        warned, trim = logging.getLogger("py.warnings"), _TrailingNewline()
        warned.addFilter(trim)  # a formatted warning ends with a newline of its own
        self._undo.append(lambda: warned.removeFilter(trim))
        self.set_level(self.level)

    def set_level(self, level: int) -> None:
        """The job's level, and what it means for the quieted libraries and warnings."""
        self.level = level
        debug = level <= logging.DEBUG
        self._handler.setLevel(level)
        logging.getLogger().setLevel(min(level, self._root_level or level))
        logging.getLogger(LOGGER).setLevel(level)
        for name, quiet in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level if debug else max(quiet, level))
        for name, floor in ALWAYS_AT_LEAST.items():
            logging.getLogger(name).setLevel(max(floor, level))
        for category in LIBRARY_WARNINGS:
            warnings.filterwarnings("default" if debug else "ignore", category=category)

    def _swap(self, owner: Any, name: str, value: Any) -> None:
        before = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, before) if getattr(owner, name) is value else None)

    def _setenv(self, name: str, value: str) -> None:
        if name in os.environ:  # the user's own setting wins
            return
        os.environ[name] = value
        self._undo.append(lambda: os.environ.pop(name, None))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    # ------------------------------------------------------------------ the story

    def first_line(self) -> None:
        rank = os.environ.get("RANK")
        where = f"pid {os.getpid()} on {socket.gethostname()}" + (f", rank {rank}" if rank not in (None, "") else "")
        self.log.info("start %s (%s): %s", self.command, where, " ".join(self.args) or "(no arguments)")

    def last_line(self, error: BaseException | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        took = time.monotonic() - self.started
        recorded = ", ".join(f"{k}={v}" for k, v in self.outputs.items())
        code = getattr(error, "exit_code", getattr(error, "code", None))
        if error is None or (code in (0, None) and type(error).__name__ in ("Exit", "SystemExit")):
            wrote = recorded or ", ".join(f"--out {p}" for p in _out_arguments(self.args)) or "none recorded"
            self.log.info("done %s in %.1f s; outputs: %s", self.command, took, wrote)
            return
        partial = f"; outputs written before it: {recorded}" if recorded else ""
        if code not in (None, 0):
            self.log.error("%s exited with code %s after %.1f s%s", self.command, code, took, partial)
        else:
            self.log.error("%s failed after %.1f s: %s: %s%s", self.command, took, type(error).__name__, error,
                           partial)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _capturing_warnings() -> bool:
    return getattr(logging, "_warnings_showwarning", None) is not None


_current: JobLog | None = None


def begin(command: str, args: list[str], level: str | None = None) -> JobLog:
    """Set up this command's logging (see the module docstring) and log its first line."""
    global _current
    if _current is not None:  # a command inside a command (tests): start afresh
        finish(None)
    job = JobLog(command, list(args), parse_level(level or DEFAULT_LEVEL), level_given=level is not None)
    job.install()
    _current = job
    job.first_line()
    return job


def level_from_config(name: str | None) -> None:
    """The config's ``tracking.log_level``: applies unless ``--log-level`` was given."""
    if _current is None or _current.level_given or name is None:
        return
    _current.set_level(parse_level(name))


def record_outputs(outputs: dict[str, str]) -> None:
    """What the command wrote (name -> ``path@digest``), for its last line."""
    if _current is not None:
        _current.outputs.update(outputs)


def finish(error: BaseException | None) -> None:
    """Log the command's last line and put back what :func:`begin` changed."""
    global _current
    job, _current = _current, None
    if job is None:
        return
    try:
        job.last_line(error)
    finally:
        job.restore()


def adopt_library_loggers() -> None:
    """Route the loggers of libraries imported by now that print in their own format through ours.

    Transformers gives its logger a handler of its own (``[transformers] message``) when it first
    logs; called when a stage's MLflow run opens (:func:`rlmt.tracking.stage_run`), by which time a
    training or generation stage has imported it.
    """
    if _current is None or "transformers" not in sys.modules:
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    _current._undo.append(lambda: (hf_logging.disable_propagation(), hf_logging.enable_default_handler()))
