"""What every command line shares (build_shards, the stage CLIs, mcld-data): logging and output paths.

Logging: quiet by default (warnings and errors on stderr), ``-v`` for progress messages, ``-vv`` for debug;
a run's log file, when there is one, records everything from INFO up whatever the console shows.
"""

from __future__ import annotations

import io
import logging
import os
import sys

from shards import storage

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "[%(name)s] %(message)s"


class OutputPathError(ValueError):
    """An output file whose folder cannot be made (the message is the one line a CLI prints)."""


def add_verbosity(parser) -> None:
    """``-v`` / ``-vv`` on an argparse parser (the value lands in ``args.verbose``)."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what is happening (-v), and debug details (-vv); default: warnings only")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one at set-up: callers (tests, notebooks) swap it, and a
    handler holding a closed stream would fail on every record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_console_logging(verbose: int = 0) -> None:
    """One stderr handler on the root logger, at WARNING, INFO (-v) or DEBUG (-vv); idempotent."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_mcld_console", False):
            handler.setLevel(level)
            break
    else:
        handler = _ConsoleHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        handler.setLevel(level)
        handler._mcld_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))


class RunLog:
    """A per-run log file in an output folder (local path or fsspec URL), from INFO up, for the loggers
    under ``names``. Local files are appended as records come; a URL gets the whole log at ``close``."""

    def __init__(self, location: str, *, names: tuple[str, ...]) -> None:
        self.location = location
        self.names = names
        self._buffer: io.StringIO | None = None
        if storage.is_url(location):
            self._buffer = io.StringIO()
            self.handler: logging.Handler = logging.StreamHandler(self._buffer)
        else:
            self.handler = logging.FileHandler(location, mode="a", encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._levels = {}
        for name in names:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.handler)

    def close(self) -> None:
        for name in self.names:
            logger = logging.getLogger(name)
            logger.removeHandler(self.handler)
            logger.setLevel(self._levels[name])
        self.handler.close()
        if self._buffer is not None:
            previous = storage.read_bytes(self.location) if storage.exists(self.location) else b""
            storage.write_bytes_atomic(self.location, previous + self._buffer.getvalue().encode("utf-8"))

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_output_file(path: str | os.PathLike) -> str:
    """Create the folder an output file goes into, or refuse in one line (OutputPathError)."""
    location = os.fspath(path)
    parent = location.rstrip("/").rpartition("/")[0] if storage.is_url(location) else os.path.dirname(os.path.abspath(location))
    if storage.exists(location) and storage.is_dir(location):
        raise OutputPathError(f"{location}: is a folder; give a file name")
    try:
        if storage.exists(parent) and not storage.is_dir(parent):
            raise OutputPathError(f"{location}: {parent} is a file, not a folder")
        storage.makedirs(parent)
    except OSError as error:
        raise OutputPathError(f"{location}: cannot create its folder {parent}: {error.strerror or error}") from error
    return location
