"""Pre-train a small MERT model on a folder of audio for a few steps, export it, and use it.

    python examples/pretrain_folder.py AUDIO_DIR RUN_DIR [--labels LABELS_DIR | --encodec-weights DIR]
                                       [--config tiny] [--steps 20] [--set KEY=VALUE ...]

With EnCodec labels (a folder from `mert labels`, or computed here from a local EnCodec
checkpoint) this is the MERT-v1 recipe: masked prediction of the 8 codebooks plus the CQT
target. Without labels it trains the music2vec (data2vec) objective, which needs no teacher.
The run is exported to RUN_DIR/export in the official layout, loaded back with mertkit.load,
and used to embed one file. `--set` changes any setting (`model.hidden_size=64` reaches the
backbone); the same run from the command line is `mert pretrain`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import mertkit
from mertkit.extraction.api import embed_file
from mertkit.pretrain.export import export_checkpoint
from mertkit.pretrain.labels import find_audio_files, write_labels
from mertkit.pretrain.pretrain_config import load_config
from mertkit.pretrain.trainer import train


def encodec_labels(audio: Path, weights: Path, out: Path) -> Path:
    from mertkit.pretrain.teachers.encodec import EncodecTeacher, load_encodec

    summary = write_labels(audio, out, EncodecTeacher(load_encodec(weights)))
    print(f"labels: {summary.written} written, {summary.skipped} already there, {len(summary.failed)} failed")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("run", type=Path, help="run folder (must not hold a run yet)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, help="EnCodec labels written by `mert labels`")
    labels.add_argument("--encodec-weights", type=Path, help="a local EnCodec 24 kHz checkpoint to label with")
    parser.add_argument("--config", default="tiny", help="preset (tiny, 95m, 330m) or JSON file")
    parser.add_argument("--steps", type=int, default=20, help="optimiser updates")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    label_dir = args.labels
    if args.encodec_weights is not None:
        label_dir = encodec_labels(args.audio, args.encodec_weights, args.run / "labels")
    objective = "mlm" if label_dir is not None else "data2vec"
    steps = [f"total_updates={args.steps}", f"warmup_updates={max(1, args.steps // 10)}",
             f"ckpt_interval={args.steps}", "log_interval=1"]
    cfg = load_config(args.config).with_overrides([f"objective={objective}", *steps, *args.overrides])
    print(f"{objective} pre-training on {len(find_audio_files(args.audio))} files for {args.steps} updates")

    train(cfg, args.audio, label_dir, args.run, device="cpu")
    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    print(f"loss: {log[0]['loss']:.3f} at update 1 -> {log[-1]['loss']:.3f} at update {log[-1]['update']}")

    exported = export_checkpoint(args.run, args.run / "export")
    model = mertkit.load(exported)  # the official layout, as the hub has it
    first = args.audio / find_audio_files(args.audio)[0]
    vectors = embed_file(model, first, pool="mean")
    print(f"exported to {exported}; {first.name} -> pooled features {list(vectors.shape)} (hidden states, width)")
    return exported


if __name__ == "__main__":
    main()
