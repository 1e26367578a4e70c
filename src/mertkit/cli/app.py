"""The `mert` command. Sub-commands live in `mertkit.cli.*` and are imported only when
run, so `mert --help` and a light command never pay for torch or the optional extras."""
from __future__ import annotations

import importlib
import importlib.util
import logging

import click

from mertkit import __version__
from mertkit.cli.options import examples, install_hint

# name -> "module:attribute" of a click command
COMMANDS = {
    "extract": ("mertkit.cli.extract:extract", "Extract hidden states from audio files into safetensors."),
    "demo": ("mertkit.cli.demo:demo", "Run extraction on the shipped example audio (works offline)."),
    "labels": ("mertkit.cli.labels:labels", "Compute pre-training labels (EnCodec / codec / k-means / BEST-RQ codes)."),
    "pretrain": ("mertkit.cli.pretrain:pretrain", "Pre-train a MERT model (the MERT-v1 recipe)."),
    "pretrain-diagnose": ("mertkit.cli.pretrain_diagnose:pretrain_diagnose",
                          "Label quality, gradient shares and probe curves of a pre-training run."),
    "synth-corpus": ("mertkit.cli.synth_corpus:synth_corpus", "Render the synthetic MIDI pre-training corpus."),
    "export": ("mertkit.cli.export:export", "Export a pre-training checkpoint to the official layout."),
    "probe": ("mertkit.cli.probe:probe", "Train probes on cached features (MARBLE-style)."),
    "eval": ("mertkit.cli.evaluate:evaluate", "Extract, cache and probe a model on a benchmark suite."),
    "bench-suite": ("mertkit.cli.bench_suite:bench_suite", "Render the offline synthetic music benchmark."),
    "search": ("mertkit.cli.search:search", "Nearest tracks in a feature store for a query audio file."),
    "serve": ("mertkit.cli.serve:serve", "A local web page over a feature store: neighbours, map, probe."),
    "models": ("mertkit.cli.models:models", "List the known models with their input contracts."),
    "manifest": ("mertkit.cli.manifest:manifest", "Write a probing manifest from a dataset folder (GTZAN, MTT, ...)."),
}


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ImportError as error:
            # An optional dependency a command needs: one line naming the extra to install.
            logging.getLogger("mertkit").debug("import failed", exc_info=True)
            raise click.ClickException(install_hint(error)) from error

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _available(name):
            return None
        target, _ = COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(name: str) -> bool:
    module = COMMANDS[name][0].split(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=examples("mert demo", "mert extract songs/ --model MERT-v1-95M -o feats/", "mert eval --quick"))
@click.version_option(__version__, prog_name="mert")
def main() -> None:
    """mertkit: the m-a-p MERT / music2vec models, natively in PyTorch."""


if __name__ == "__main__":
    main()
