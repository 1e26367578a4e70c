"""The options every `mert` command spells the same way, and the value types they share.

    -o/--out       where results go          --model     registry name, hub id or folder
    --layers       hidden states to use      --device    auto|cpu|cuda|cuda:N|mps (auto default)
    -q/--quiet     warnings and errors only  -v/--verbose  debug messages too

Values are checked here, when the command line is parsed, so that a bad one is a one-line
usage error (exit code 2) before any work starts.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

MAX_BATCH_SIZE = 1024  # items in one forward pass: far beyond what any machine gains from


class FiniteFloat(click.FloatRange):
    """A float in a range that is neither NaN nor infinite (click's FloatRange lets both by)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


PositiveInt = click.IntRange(min=1)
BatchSize = click.IntRange(1, MAX_BATCH_SIZE)


class CommaList(click.ParamType):
    """'a,b,c' -> a tuple of values, each checked by `item` (a click type)."""

    name = "list"

    def __init__(self, item: click.ParamType) -> None:
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",") if part.strip()]
        if not parts:
            self.fail(f"expected comma-separated values, got {value!r}", param, ctx)
        return tuple(self.item.convert(part, param, ctx) for part in parts)


LearningRates = CommaList(FiniteFloat(min=0, min_open=True))
Names = CommaList(click.STRING)
Seeds = CommaList(click.IntRange(0, 2**32 - 1))


def parse_baselines(value: str) -> tuple[str, ...]:
    """`--baselines`: 'mfcc,chroma' -> ('mfcc', 'chroma'); 'none' -> () (names are checked where they are used)."""
    return () if value.strip().lower() == "none" else Names.convert(value, None, None)


class Device(click.ParamType):
    """auto | cpu | cuda | cuda:N | mps, resolved to a device this machine has.

    auto picks cuda when available, else mps when available, else cpu.
    """

    name = "device"
    _SPELLING = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name = str(value).strip().lower()
        if not self._SPELLING.fullmatch(name):
            self.fail(f"{value!r} is not a device: use auto, cpu, cuda, cuda:N or mps", param, ctx)
        import torch

        mps = getattr(torch.backends, "mps", None)
        has_mps = mps is not None and mps.is_available()
        if name == "auto":
            return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
        if name == "mps" and not has_mps:
            self.fail("mps is not available on this machine", param, ctx)
        if name.startswith("cuda"):
            index = int(name.split(":")[1]) if ":" in name else 0
            if index >= torch.cuda.device_count():
                self.fail(f"{name} is not available on this machine "
                          f"({torch.cuda.device_count()} CUDA device(s))", param, ctx)
        return name


def out_option(help: str, *, required: bool = True, default: Any = None,
               path_type: type = str) -> Callable[[F], F]:
    """-o/--out: the folder a command writes; passed on as `out`."""
    return click.option("-o", "--out", "out", required=required and default is None, default=default,
                        show_default=default is not None, type=click.Path(file_okay=False, path_type=path_type),
                        help=help)


def model_option(*, required: bool = True, default: str | None = None, help: str | None = None) -> Callable[[F], F]:
    """-m/--model: a registry name (see mertkit.PRETRAINED), a hub id, or a checkpoint folder."""
    return click.option("-m", "--model", "model", required=required, default=default,
                        help=help or "Registry name (e.g. MERT-v1-95M, mertkit-tiny-mel), hub id, or checkpoint folder.")


def device_option(help: str = "Where the model runs.") -> Callable[[F], F]:
    return click.option("--device", type=Device(), default="auto", show_default=True,
                        help=f"{help} auto = cuda if available, else mps if available, else cpu.")


def verbosity(function: F) -> F:
    """-q/--quiet and -v/--verbose: the level of the `mertkit` loggers (and `quiet()` for bars)."""
    function = click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                            callback=_remember, help="Debug messages too.")(function)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                        callback=_remember, help="Only warnings and errors: no progress.")(function)


def quiet() -> bool:
    """Whether the running command was given -q/--quiet."""
    return bool(click.get_current_context().meta.get("mertkit.quiet", False))


def _remember(ctx: click.Context, param: click.Parameter, value: bool | int) -> None:
    ctx.meta[f"mertkit.{param.name}"] = value
    if "mertkit.quiet" in ctx.meta and "mertkit.verbose" in ctx.meta:
        if ctx.meta["mertkit.quiet"] and ctx.meta["mertkit.verbose"]:
            raise click.UsageError("give -q/--quiet or -v/--verbose, not both", ctx)
        configure_logging(quiet=ctx.meta["mertkit.quiet"], verbose=ctx.meta["mertkit.verbose"])


def configure_logging(quiet: bool = False, verbose: int = 0) -> None:
    """`mertkit.*` log records to stderr: WARNING with quiet, DEBUG with verbose, else INFO;
    quiet also silences every mertkit.progress bar."""
    from mertkit.progress import set_quiet

    set_quiet(quiet)
    logger = logging.getLogger("mertkit")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(handler, _ClickHandler) for handler in logger.handlers):
        logger.addHandler(_ClickHandler())


class _ClickHandler(logging.Handler):
    """Writes through click, so that a message goes to the stderr of the command running now."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


# The extra that installs each optional package a command may import.
EXTRAS = {
    "pyarrow": "store", "faiss": "search", "ray": "ray", "matplotlib": "eval", "mir_eval": "eval",
    "pretty_midi": "eval", "sklearn": "pretrain", "scipy": "pretrain", "music21": "chorales",
}
# tinysoundfont declares pyaudio (for playback, which mertkit never uses), and pyaudio does not
# build without the PortAudio headers: so it is in no extra and is installed without its deps.
TINYSOUNDFONT = "pip install --no-deps 'tinysoundfont==0.3.7' (it declares pyaudio, which mertkit does not use)"


def install_hint(error: ImportError) -> str:
    """One line saying which package is missing and how to install it, for an ImportError
    (or one raised from it) of an optional dependency; else the error's own message."""
    cause: BaseException | None = error
    while cause is not None:
        name = (getattr(cause, "name", None) or "").split(".")[0] if isinstance(cause, ImportError) else ""
        if name == "tinysoundfont":
            return f"the 'tinysoundfont' package is missing: {TINYSOUNDFONT}"
        if name in EXTRAS:
            return f"the {name!r} package is missing: pip install 'mertkit[{EXTRAS[name]}]'"
        cause = cause.__cause__ or cause.__context__
    return str(error)


def examples(*lines: str) -> str:
    """The `Example:` section of a command's --help (an epilog click keeps line by line)."""
    heading = "Examples:" if len(lines) > 1 else "Example:"
    return f"\b\n{heading}\n" + "\n".join(f"  {line}" for line in lines)


def max_duration_value(text: str | None) -> float | None:
    """--max-duration (shared with `mert labels`): seconds, or None for no limit."""
    from mertkit.audio import DEFAULT_MAX_DURATION, parse_max_duration

    if text is None:
        return DEFAULT_MAX_DURATION
    try:
        return parse_max_duration(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--max-duration") from None
