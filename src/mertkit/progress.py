"""Progress for long work: units done, rate and ETA, on a terminal bar or in the log.

One helper for every long task (extraction, labels, pre-training, bench-suite, eval stages,
probes, Ray)::

    with Progress(total=len(files), desc="labels", unit="file") as bar:
        for path in files:
            ...
            bar.update(1, loss=0.31)          # optional key=value shown beside the bar

* On a terminal (stderr is a TTY) it draws a tqdm bar on stderr: count/total, rate, ETA.
* Off a terminal (CI, a log file, a pipe) a bar would fill the log with carriage returns, so
  it writes a line through :mod:`logging` (logger ``mertkit.progress``, level INFO) at most
  every ``log_every`` seconds and once at the end: ``labels: 120/360 file, 3.2 file/s, ETA 0:01:15``.
* ``enabled=False`` (a command's ``--quiet``), or :func:`set_quiet`, silences both.

Commands get ``-q`` / ``-v`` from :func:`mertkit.cli.options.verbosity`, which sends the
``mertkit.*`` loggers to stderr at the level asked for and calls :func:`set_quiet`.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["Progress", "format_duration", "set_quiet", "is_quiet"]

LOGGER = logging.getLogger("mertkit.progress")
_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence every Progress created afterwards in this process (a command's ``--quiet``)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def format_duration(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour); '?' when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Units processed, rate and ETA for one piece of long work (see the module docstring).

    total: units expected (None: unknown, no ETA). unit: what is counted ("clip", "s" of
    audio, "step"...). enabled: False silences it (``--quiet``); None decides from
    :func:`set_quiet`. tty: force the bar (True) or the log lines (False); None looks at stderr.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", *, enabled: bool | None = None,
                 tty: bool | None = None, log_every: float = 30.0, initial: float = 0.0,
                 logger: logging.Logger | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.count = float(initial)
        self.enabled = (not _QUIET) if enabled is None else bool(enabled) and not _QUIET
        self.log_every = log_every
        self.logger = logger or LOGGER
        self.started = time.monotonic()
        self._initial = float(initial)
        self._last_log = self.started
        self._postfix: dict[str, Any] = {}
        self._closed = False
        use_bar = sys.stderr.isatty() if tty is None else tty
        self._bar = self._make_bar(initial) if self.enabled and use_bar else None

    def _make_bar(self, initial: float) -> Any:
        from tqdm import tqdm

        whole = int(initial) if float(initial).is_integer() else initial  # "3/3", not "3.0/3"
        return tqdm(total=self.total, initial=whole, desc=self.desc, unit=self.unit, file=sys.stderr,
                    dynamic_ncols=True, leave=True, unit_scale=self.unit == "s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Units per second since the start (excluding units already done at the start)."""
        elapsed = time.monotonic() - self.started
        return (self.count - self._initial) / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (NaN when unknown)."""
        if self.total is None or self.rate <= 0:
            return float("nan")
        return max(self.total - self.count, 0.0) / self.rate

    def update(self, n: float = 1.0, **postfix: Any) -> None:
        """Count ``n`` more units; ``postfix`` (e.g. loss=0.3) is shown beside the count."""
        self.count += n
        if postfix:
            self._postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(n)
        elif time.monotonic() - self._last_log >= self.log_every:
            self._log()

    def set_total(self, total: float | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def line(self) -> str:
        """``desc: count/total unit, rate unit/s, ETA h:mm:ss[, key=value ...]``."""
        count = f"{self.count:g}" if self.total is None else f"{self.count:g}/{self.total:g}"
        parts = [f"{self.desc}: {count} {self.unit}", f"{self.rate:.3g} {self.unit}/s"]
        if self.total is not None:
            parts.append(f"ETA {format_duration(self.eta)}")
        parts += [f"{key}={_short(value)}" for key, value in self._postfix.items()]
        return ", ".join(parts)

    def _log(self) -> None:
        self._last_log = time.monotonic()
        self.logger.info(self.line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            count = f"{self.count:g} {self.unit}"
            extra = "".join(f", {key}={_short(value)}" for key, value in self._postfix.items())
            self.logger.info(f"{self.desc}: {count} in {format_duration(time.monotonic() - self.started)}, "
                             f"{self.rate:.3g} {self.unit}/s{extra}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
