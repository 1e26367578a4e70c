"""Durable, atomic file output and the clean-up that goes with it: the one way mertkit writes.

`atomic_write(target, write)` writes through a temporary file in the target's folder, flushes
and fsyncs it, renames it over the target and fsyncs the folder, so the target is either the
old file or the complete new one, also after a power cut. The temporary file is removed on any
error (KeyboardInterrupt and SystemExit included), and the new file gets the permissions any
other program would give it: 0o666 less the user's umask (mkstemp alone makes them 0o600).

Temporary names are `.tmp-<host>-<pid>-<random>`: `remove_stale_temps(folder)` deletes those
left by a process of this host that no longer runs (a run killed with SIGKILL), and leaves
every other file alone, including the temps of live runs.

`terminate_raises()` makes SIGTERM and SIGHUP raise `Terminated` (a SystemExit, exit status
128 + signal) in the main thread, and SIGINT raise KeyboardInterrupt, for the length of a
block: `finally` clauses then run and remove temps, where the default action would kill the
process on the spot. A C library's Python callback (soundfile's reader) swallows an exception
raised inside it ("Exception ignored from cffi callback"): the block keeps such a signal
(through `sys.unraisablehook`), `raise_pending_signal()` raises it again at a safe point (the
decoder calls it after every block), and the block raises it on a normal exit, so a run never
reports success after a signal.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Terminated",
    "atomic_write",
    "current_umask",
    "make_temp_dir",
    "raise_pending_signal",
    "remove_stale_temps",
    "temp_prefix",
    "terminate_raises",
]

TEMP_MARK = ".tmp-"
# Our temp names: .tmp-<8 hex of the host name>-<pid>-<anything>.
_TEMP_NAME = re.compile(r"^\.tmp-([0-9a-f]{8})-(\d+)-")
_UMASK_LOCK = threading.Lock()


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def temp_prefix() -> str:
    """The start of every temp name this process creates (see the module docstring)."""
    return f"{TEMP_MARK}{_host_tag()}-{os.getpid()}-"


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass  # not Linux: the set-and-restore below is the only portable way to read it
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(target: str | os.PathLike, write: Callable[[Any], None], *, mode: str = "wb") -> Path:
    """Write `target` through `write(handle)` (binary, or text with mode="w"), atomically and
    durably; see the module docstring. OSError (a full disk, a read-only folder, a name too
    long) reaches the caller with no temp file left behind."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(target)
    fd, temp_name = tempfile.mkstemp(prefix=temp_prefix(), dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def write_json(target: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON (strict: NaN or Infinity is a ValueError), written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(target, lambda handle: handle.write(text), mode="w")


def writable_dir_problem(folder: str | os.PathLike, what: str) -> str | None:
    """Create `folder` if needed; the one-line reason it cannot be written, or None.
    `what` names it in the message ("output folder", "store folder")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{folder}: cannot create the {what} ({err.strerror or err})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder}: the {what} is not writable"
    return None


class TaggedFileError(ValueError):
    """A torch-saved mertkit file that is missing, unreadable or of another kind (one line)."""


def read_tagged_torch(path: str | os.PathLike, fmt: str | tuple[str, ...], what: str) -> dict:
    """The dict a mertkit writer saved with torch.save and `"format": fmt` (or one of several
    formats), loaded with weights_only=True (no pickled code runs). `what` names the kind of
    file in errors."""
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise TaggedFileError(f"{path}: no such {what}") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise TaggedFileError(f"{path}: not a readable {what} ({type(err).__name__}: {first_line})") from err
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise TaggedFileError(f"{path}: not a mertkit {what} (format {' or '.join(formats)})")
    return payload


def make_temp_dir(parent: str | os.PathLike) -> Path:
    """A private temp folder in `parent`, named so that `remove_stale_temps` recognises it."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(), dir=parent))


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temps in `folder` whose process (on this host) has ended; return them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # a folder we cannot list holds nothing we could have written
    host = _host_tag()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match.group(1) != host or _alive(int(match.group(2))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another run cleaned it first
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM or SIGHUP inside `terminate_raises()`."""


# A signal whose exception a C callback swallowed inside terminate_raises() (see the docstring).
_pending_signal: int | None = None


def _exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(128 + signum)


def _raise_for(signum: int, frame: object) -> None:
    raise _exception_for(signum)


def _keep_swallowed_signal(previous_hook: Callable) -> Callable:
    """An unraisable hook that keeps our signal exceptions for `raise_pending_signal()`."""
    def hook(unraisable) -> None:
        global _pending_signal
        error = unraisable.exc_value
        if isinstance(error, Terminated):
            _pending_signal = int(error.code) - 128
        elif isinstance(error, KeyboardInterrupt):
            _pending_signal = signal.SIGINT
        else:
            previous_hook(unraisable)
    return hook


def raise_pending_signal() -> None:
    """Raise once more a signal whose exception a C callback swallowed in this
    `terminate_raises()` block, if any: call it where that can have happened (after each
    block soundfile reads)."""
    if _pending_signal is not None:
        raise _exception_for(_pending_signal)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise instead of killing the process (see the
    module docstring); the previous handlers come back afterwards. Signals a caller chose to
    ignore (SIG_IGN, e.g. SIGINT of a background job) or to handle itself stay as they are;
    outside the main thread nothing changes (Python runs handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending_signal
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, _raise_for)
    if not previous:  # an enclosing block (or the caller) owns the handlers and the pending signal
        yield
        return
    _pending_signal, previous_hook = None, sys.unraisablehook
    sys.unraisablehook = _keep_swallowed_signal(previous_hook)
    try:
        yield
        raise_pending_signal()  # the block ran to its end although a signal came: it was swallowed
    finally:
        _pending_signal, sys.unraisablehook = None, previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
