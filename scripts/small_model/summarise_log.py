"""Summarise a pre-training run's log.jsonl into training_summary.json (shipped with the model).

    python scripts/small_model/summarise_log.py RUN_DIR OUT_JSON
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main(run: Path, out: Path) -> None:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((run / "config.json").read_text())
    head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
    summary = {
        "recipe": "MERT-v1 (MLM on 8 codebooks of a random-projection EnCodec-shaped teacher + CQT, in-batch mixture)",
        "updates": rows[-1]["update"],
        # every update reads batch_size x grad_accum crops of at most crop_seconds
        "audio_seconds_seen_at_most": rows[-1]["update"] * config["batch_size"] * config["grad_accum"] * config["crop_seconds"],
        "loss_first": mean(head, "loss"),
        "loss_last": mean(tail, "loss"),
        "cqt_mse_first": mean(head, "cqt_mse"),
        "cqt_mse_last": mean(tail, "cqt_mse"),
        "masked_accuracy_per_codebook_last": [sum(r["accuracy"][k] for r in tail) / len(tail) for k in range(len(tail[0]["accuracy"]))],
        "chance_accuracy": 1 / config["codebook_size"],
        "config": config,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
