"""The loop's progress bar, with every console log line written through it.

While a tqdm bar is on the terminal, a log line written straight to the terminal lands in the middle
of the bar. ``progress_bar`` routes every console handler (the root logger's, and those of libraries
that keep their own, such as transformers') through ``tqdm.write`` for as long as the bar is shown:
the bar is cleared, the line written, the bar drawn again.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm import tqdm


class _ThroughTqdm(logging.StreamHandler):
    """Writes its records with ``tqdm.write`` to the stream of the handler it stands in for."""

    def __init__(self, replaced: logging.StreamHandler) -> None:
        super().__init__(replaced.stream)
        self.setFormatter(replaced.formatter)
        self.setLevel(replaced.level)
        for record_filter in replaced.filters:
            self.addFilter(record_filter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    return (type(handler) is logging.StreamHandler or isinstance(handler, _ThroughTqdm)) and id(handler.stream) in streams


def _loggers() -> list[logging.Logger]:
    named = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    return [logging.getLogger(), *(logger for logger in named if logger.handlers)]


@contextmanager
def progress_bar(**options: Any) -> Iterator[tqdm]:
    """A ``tqdm(**options)`` bar; console log handlers write through it while it is open."""
    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    for logger in _loggers():
        for index, handler in enumerate(list(logger.handlers)):
            if _is_console(handler) and not isinstance(handler, _ThroughTqdm):
                through = _ThroughTqdm(handler)  # type: ignore[arg-type]
                logger.handlers[index] = through  # in place: the handlers keep their order
                swapped.append((logger, handler, through))
    try:
        with tqdm(**options) as bar:
            yield bar
    finally:
        for logger, handler, through in reversed(swapped):
            if through in logger.handlers:
                logger.handlers[logger.handlers.index(through)] = handler
