"""Summarise a pre-training run's log.jsonl into training_summary.json (shipped with the model).

    python scripts/small_model/summarise_log.py RUN_DIR LABEL_DIR OUT_JSON [RECIPE_SCRIPT]

The recipe line is read from the run's config and the label folder's teacher, so the summary
says what was trained, not what the script assumes. With RECIPE_SCRIPT (e.g. retrain.sh) the
summary also lists the commands that reproduce the model: the script's `mert` / `python` lines.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def recipe_line(config: dict, teacher: str) -> str:
    parts = [f"MLM on {config['n_codebooks']} x {config['codebook_size']} codes of the {teacher} teacher "
             f"(CE weight {config['ce_weight']})"]
    if config["cqt"]:
        parts.append(f"CQT reconstruction ({config.get('cqt_target', 'magnitude')}, weight {config['cqt_weight']})")
    derived = {"flux_weight": "onset flux of each octave", "chroma_weight": "chroma",
               "timbre_weight": f"{config.get('timbre_coefficients', 20)} cepstral coefficients of the log CQT",
               "texture_weight": f"local statistics (+-{config.get('texture_window_seconds', 0.25)} s) of a full-band "
                                 "log-mel cepstrum"}
    for key, what in derived.items():
        if config.get(key, 0) > 0:
            parts.append(f"{what} on the CQT head (weight {config[key]})")
    if config.get("unmasked_weight", 0) > 0:
        parts.append(f"both also on unmasked frames (weight {config['unmasked_weight']})")
    parts.append(f"in-batch mixture p={config['mixture_prob']}" if config["mixture_prob"] > 0 else "no mixture")
    return "; ".join(parts)


def teacher_name(labels: Path) -> str:
    first = (labels / "manifest.jsonl").read_text().splitlines()[0]
    return json.loads(first)["teacher"]


def reproduce_commands(script: Path) -> list[str]:
    """The command lines of a shell recipe, continuation lines joined, comments dropped."""
    commands, pending = [], ""
    for raw in script.read_text().splitlines():
        line = raw.split(" #")[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not pending:
            continue
        pending = f"{pending} {line.rstrip(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            if pending.startswith(("mert ", "python ")):
                commands.append(pending)
            pending = ""
    return commands


def main(run: Path, labels: Path, out: Path, script: Path | None = None) -> None:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((run / "config.json").read_text())
    head, tail = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
    summary = {
        "recipe": recipe_line(config, teacher_name(labels)),
        "updates": rows[-1]["update"],
        # every update reads batch_size x grad_accum crops of at most crop_seconds
        "audio_seconds_seen_at_most": rows[-1]["update"] * config["batch_size"] * config["grad_accum"] * config["crop_seconds"],
        "loss_first": mean(head, "loss"),
        "loss_last": mean(tail, "loss"),
        "cqt_mse_first": mean(head, "cqt_mse"),
        "cqt_mse_last": mean(tail, "cqt_mse"),
        **{f"{name}_mse_{end}": mean(rows_, f"{name}_mse") for name in ("flux", "chroma", "timbre", "texture")
           if f"{name}_mse" in rows[0] for end, rows_ in (("first", head), ("last", tail))},
        "masked_accuracy_per_codebook_last": [sum(r["accuracy"][k] for r in tail) / len(tail) for k in range(len(tail[0]["accuracy"]))],
        "chance_accuracy": 1 / config["codebook_size"],
        "config": config,
    }
    if script is not None:
        summary["reproduce"] = reproduce_commands(script)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit("usage: python scripts/small_model/summarise_log.py RUN_DIR LABEL_DIR OUT_JSON [RECIPE_SCRIPT]")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) == 5 else None)
