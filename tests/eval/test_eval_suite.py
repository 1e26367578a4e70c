"""`mert eval --suite synth` end to end on a tiny suite and a tiny random checkpoint."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")
pytest.importorskip("matplotlib")
soundfile = pytest.importorskip("soundfile")

from model_fixtures import tiny_config  # noqa: E402

from mertkit.audio import load_audio  # noqa: E402
from mertkit.models.checkpoint import load, save_pretrained  # noqa: E402
from mertkit.cli.evaluate import evaluate  # noqa: E402
from mertkit.eval import suite_runner  # noqa: E402
from mertkit.eval.baselines import chroma_stats, load_segment, logmel_stats, mfcc_stats, onset_features  # noqa: E402
from mertkit.eval.datasets import Record, TaskSpec  # noqa: E402
from mertkit.eval.features import from_safetensors_dir, read_feature_file  # noqa: E402
from mertkit.eval.suite_runner import SuiteRunError, SuiteTask, run_suite  # noqa: E402
from mertkit.models.hubert.model import MertModel  # noqa: E402

torch.set_num_threads(2)
CLIPS = 10  # the smallest count whose valid and test splits hold 2 clips (R² needs 2)
TASKS = ("pitch", "instrument", "key", "tempo", "beat")
FAST = dict(seeds=(0, 1), lrs=(1e-2,), max_epochs=2, patience=1, progress=False)


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_pretrained(MertModel(tiny_config()), directory, formats=("safetensors",))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = tiny_checkpoint(root / "tiny-mert")
    first = run_suite(model_dir, root / "suite", root / "out", tasks=TASKS, clips_per_task=CLIPS, random_init=0,
                      run_name="first", **FAST)
    return root, model_dir, first


def only(paths) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


def feature_files(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((out / "features").rglob("*.safetensors"))}


def test_every_task_and_baseline_has_a_finite_score(run):
    root, _, result = run
    payload = json.loads((root / "out" / "first" / "results.json").read_text())
    found = {(r["task"], r["kind"], r["setting"]) for r in payload["results"]}
    for task in TASKS:
        assert {(task, "model", "all"), (task, "model", "weighted")} <= found
        clip, frames = {(task, "baseline", "stats")}, {(task, "baseline", "frames"), (task, "baseline", "peaks")}
        # Clip statistics serve every clip task; onset strength (probed and peak-picked) serves beat only.
        assert (clip <= found and not frames & found) if task != "beat" else (frames <= found and not clip & found)
    sources = {(r["task"], r["source"]) for r in payload["results"] if r["kind"] == "baseline"}
    assert {source for task, source in sources if task == "beat"} == {"onset", "onset peaks"}
    assert {source for task, source in sources if task == "pitch"} == {"mfcc", "chroma", "logmel"}
    onset = next(r for r in payload["results"] if r["source"] == "onset")
    assert onset["probe"] == "linear" and [run_["seed"] for run_ in onset["runs"]] == [0, 1]  # the beat probe's settings
    peaks = next(r for r in payload["results"] if r["source"] == "onset peaks")
    assert peaks["probe"].startswith("peak picking (threshold") and peaks["best_lr"] is None
    assert payload["null_reasons"]["results[" + str(payload["results"].index(peaks)) + "].best_lr"].startswith("no probe")
    for entry in payload["results"]:
        assert np.isfinite(entry["test_mean"][entry["metric"]]), entry
    sweep = [r for r in payload["results"] if r["setting"] == "all"]
    assert all(len(r["per_layer"]) == tiny_config().num_hidden_states for r in sweep)
    metrics = {r["task"]: r["metric"] for r in payload["results"]}
    # clip tasks take the run's probe (the MLP by default); the frame-level beat task the linear one
    kinds = {r["task"]: r["probe"] for r in payload["results"] if r["kind"] == "model"}
    assert kinds == {"pitch": "mlp", "instrument": "mlp", "key": "mlp", "tempo": "mlp", "beat": "linear"}
    assert payload["probe"]["beat_kind"] == "linear"
    assert metrics == {"pitch": "accuracy", "instrument": "accuracy", "key": "accuracy", "tempo": "r2", "beat": "beat_f"}
    assert payload["model"]["path"] == str(root / "tiny-mert") and payload["model"]["random_weights"] is False
    assert payload["probe"]["seeds"] == [0, 1]
    png = (root / "out" / "first" / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_summary_table_matches_the_json(run):
    root, _, result = run
    table = result.paths["markdown"].read_text()
    assert table.startswith(result.table)
    header = next(line for line in table.splitlines() if line.startswith("| task |"))
    assert "MFCC stats" in header and "chroma stats" in header and "best layer" in header and "weighted" in header
    assert "log-mel stats" in header and "onset strength (probe)" in header and "onset peaks (no probe)" in header
    rows = {line.split("|")[1].strip(): line for line in result.table.splitlines() if line.startswith("| ")}
    for entry in result.entries:
        mean = 100 * entry.result.score
        std = 100 * entry.result.test_std[entry.result.metric]
        one_seed = len(entry.result.runs) == 1  # the probe-free onset peaks
        assert (f"{mean:.1f} (n=1)" if one_seed else f"{mean:.1f} ± {std:.1f}") in rows[entry.task]
    # beat: no clip statistics (3 n/a), then the two onset rows; clip tasks: n/a under the onset columns
    assert re.search(r"\| beat \| beat_f \|.*(\| n/a ){3}\| [0-9.]+ ± [0-9.]+ .*\| [0-9.]+ \(n=1\) .*\| - \|$", rows["beat"])
    assert re.search(r"\| n/a \| n/a \| [0-9.]+ \|$", rows["pitch"])
    assert any("onset: log-mel spectral flux" in note and "75 frames/s" in note for note in result.notes)


def test_best_layer_is_paired_with_every_baseline_on_the_same_clips(run):
    root, _, result = run
    payload = json.loads((root / "out" / "first" / "results.json").read_text())
    titles = {"mfcc": "MFCC stats", "chroma": "chroma stats", "logmel": "log-mel stats", "onset": "onset strength (probe)",
              "onset peaks": "onset peaks (no probe)"}
    model = {r["task"]: r["test_mean"][r["metric"]] for r in payload["results"] if r["kind"] == "model" and r["setting"] == "all"}
    baselines = {(r["task"], titles[r["source"]]): r["test_mean"][r["metric"]]
                 for r in payload["results"] if r["kind"] == "baseline"}
    assert {(row["task"], row["against"]) for row in payload["paired"]} == set(baselines)
    section = (root / "out" / "first" / "results.md").read_text().split("## Paired on the same test clips")[1]
    section = section.split("## Detail")[0]
    for row in payload["paired"]:
        assert row["difference"] == pytest.approx(model[row["task"]] - baselines[(row["task"], row["against"])], abs=1e-9)
        low, high = row["interval"]
        assert row["n_test"] == 2 and low <= row["difference"] <= high
        assert row["verdict"] == ("ahead" if low > 0 else "behind" if high < 0 else "within noise")
        assert f"| {row['task']} | tiny-mert | {row['against']} | {100 * row['difference']:+.1f} |" in section


def test_cached_model_features_are_mean_pooled_hidden_states(run):
    root, model_dir, result = run
    folder = root / "suite" / "pitch"
    cache = only((root / "out" / "features" / result.model.cache_key).glob("pitch-*"))
    model = load(model_dir)
    # Reference: the model run directly on the whole clip, normalised as Wav2Vec2FeatureExtractor does.
    wave = load_audio(folder / "clips" / "000003.wav", model.config.sample_rate)
    wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.no_grad():
        states = model(torch.from_numpy(wave.astype(np.float32))[None]).hidden_states
    expected = torch.stack([s[0].mean(0) for s in states]).numpy()
    hidden, meta = read_feature_file(cache / "clips" / "000003.wav.safetensors")
    np.testing.assert_allclose(hidden, expected, rtol=1e-4, atol=1e-5)
    assert meta["pooling"] == "mean"


def test_tempo_reads_the_frame_cache_as_its_time_mean(run):
    root, _, result = run
    frames_dir = only((root / "out" / "features" / result.model.cache_key).glob("tempo-*-frames"))
    assert len(list(frames_dir.parent.glob("tempo-*"))) == 1  # the tempo audio was run once
    tasks = {t.name: t for t in suite_runner.load_suite_tasks({"tempo": root / "suite" / "tempo"})}
    tempo = tasks["tempo"]
    data = from_safetensors_dir(frames_dir, tempo.records, tempo.spec)
    first = next(r for r in tempo.records if r.split == "train")
    hidden, _ = read_feature_file(frames_dir / f"{first.path}.safetensors")
    assert hidden.ndim == 3  # [layers, frames, width]
    np.testing.assert_allclose(data.train.x[0], hidden.mean(axis=1), rtol=1e-6)
    with (root / "suite" / "tempo" / "manifest.csv").open(newline="") as handle:
        bpm = {row["path"]: float(row["label"]) for row in csv.DictReader(handle)}
    assert all(record.label == (bpm[record.path],) for record in tempo.records)
    assert all(record.beats_path is not None for record in tasks["beat"].records)


def test_cached_baselines_are_the_clip_statistics(run):
    root, _, _ = run
    record = Record("clips/000001.wav", "train", None, root / "suite" / "key" / "clips" / "000001.wav")
    for name, compute in (("mfcc", mfcc_stats), ("chroma", chroma_stats), ("logmel", logmel_stats)):
        cache = only((root / "out" / "features" / f"baseline-{name}").glob("key-*"))
        hidden, _ = read_feature_file(cache / "clips" / "000001.wav.safetensors")
        np.testing.assert_allclose(hidden, compute(load_segment(record, 22050)), rtol=1e-5, atol=1e-6)


def test_onset_baseline_is_on_the_beat_features_frame_grid(run):
    root, _, result = run
    clip = "clips/000001.wav"
    model_file = only((root / "out" / "features" / result.model.cache_key).glob("tempo-*-frames")) / f"{clip}.safetensors"
    model_hidden, model_meta = read_feature_file(model_file)
    assert model_meta["frame_rate"] == "75.0"  # 24 kHz / 320
    cache = only((root / "out" / "features").glob("baseline-onset-75hz/tempo-*"))
    hidden, meta = read_feature_file(cache / f"{clip}.safetensors")
    assert meta["frame_rate"] == model_meta["frame_rate"] and meta["pooling"] == "none"
    record = Record(clip, "train", None, root / "suite" / "tempo" / clip)
    np.testing.assert_allclose(hidden, onset_features(load_segment(record, 22050), 22050, 294), rtol=1e-5, atol=1e-6)
    # The same grid (frame t at t / 75 s); the model's conv front end (400-sample receptive field,
    # 320-sample stride) stops 1 or 2 frames before the onset's centred frames do.
    assert 1 <= hidden.shape[1] - model_hidden.shape[1] <= 2


def test_baseline_files_of_another_version_are_recomputed(run, tmp_path):
    from safetensors.numpy import save_file

    from mertkit.eval.baselines import FEATURE_VERSION

    root, _, _ = run
    shutil.copytree(root / "out" / "features" / "baseline-mfcc", tmp_path / "features" / "baseline-mfcc")
    tasks = suite_runner.load_suite_tasks({"key": root / "suite" / "key"})
    stale = only((tmp_path / "features" / "baseline-mfcc").glob("key-*")) / "clips" / "000002.wav.safetensors"
    hidden, meta = read_feature_file(stale)
    assert meta["baseline_version"] == FEATURE_VERSION
    save_file({"hidden_states": np.zeros_like(hidden)}, str(stale), metadata={**meta, "baseline_version": "1"})
    untouched = {str(p): p.stat().st_mtime_ns for p in stale.parent.glob("*.safetensors") if p != stale}
    suite_runner.write_baselines(tasks, tmp_path, "mfcc", lambda message: None, progress=False)
    hidden_again, meta_again = read_feature_file(stale)
    assert meta_again["baseline_version"] == FEATURE_VERSION and np.array_equal(hidden_again, hidden)
    assert {str(p): p.stat().st_mtime_ns for p in stale.parent.glob("*.safetensors") if p != stale} == untouched


def test_rerun_reuses_suite_and_features(run):
    root, model_dir, first = run
    before = feature_files(root / "out")
    suite_before = {str(p): p.stat().st_mtime_ns for p in (root / "suite").rglob("*") if p.is_file()}
    # model: 4 folders (tempo once); 3 clip baselines x 4 clip tasks; onset on the tempo clips (beat)
    assert len(before) == CLIPS * (4 + 3 * 4 + 1)
    # Only the weighted probe this time: the point is the cache, and the sweeps cost time.
    second = run_suite(model_dir, root / "suite", root / "out", tasks=TASKS, clips_per_task=CLIPS,
                       layers="weighted", random_init=0, **FAST)
    assert second.paths["json"].parent.parent == root / "out" and second.paths["json"].parent.name != "first"
    assert feature_files(root / "out") == before
    assert {str(p): p.stat().st_mtime_ns for p in (root / "suite").rglob("*") if p.is_file()} == suite_before
    # Probes are deterministic on CPU, so the same cache gives the same numbers.
    scores = {(e.task, e.source, e.setting): e.result.test_mean for e in first.entries if e.setting != "all"}
    assert {(e.task, e.source, e.setting): e.result.test_mean for e in second.entries} == scores


def test_floor_scores_against_brute_force_and_sklearn(tmp_path):
    from sklearn.metrics import r2_score

    spec = TaskSpec("toy", "multiclass", 3, labels=("a", "b", "c"))
    rows = [("train", "a"), ("train", "b"), ("train", "b"), ("valid", "a"), ("test", "b"), ("test", "c"), ("test", "b")]
    task = SuiteTask("toy", tmp_path, spec, [Record(f"{i}.wav", s, label, tmp_path) for i, (s, label) in enumerate(rows)])
    assert suite_runner.floor_score(task) == pytest.approx(2 / 3)  # "b" is the training majority
    regression = TaskSpec("bpm", "regression", 1, labels=("bpm",))
    values = [("train", 100.0), ("train", 120.0), ("valid", 90.0), ("test", 80.0), ("test", 150.0), ("test", 130.0)]
    task = SuiteTask("bpm", tmp_path, regression, [Record(f"{i}.wav", s, (v,), tmp_path) for i, (s, v) in enumerate(values)])
    test = [v for s, v in values if s == "test"]
    assert suite_runner.floor_score(task) == pytest.approx(r2_score(test, [110.0] * len(test)))


def test_existing_suite_with_another_seed_is_refused(run, tmp_path):
    root, model_dir, _ = run
    with pytest.raises(SuiteRunError, match=r"suite/pitch: was built with seed 0 and 10 clips.*seed 3"):
        run_suite(model_dir, root / "suite", tmp_path / "out", tasks=["pitch"], seed=3, **FAST)
    with pytest.raises(SuiteRunError, match=r"first: already holds a report.*--overwrite"):
        run_suite(model_dir, root / "suite", root / "out", tasks=["pitch"], run_name="first", **FAST)


def test_report_names_the_soundfont_and_a_suite_of_another_is_not_topped_up(run, tmp_path):
    import hashlib

    from mertkit.synth.render import default_soundfont

    root, model_dir, result = run
    digest = hashlib.sha256(Path(default_soundfont()).read_bytes()).hexdigest()
    assert f"- suite: synth, seed 0, SoundFont TimGM6mb.sf2 (sha256:{digest[:12]}), splits" in result.table
    assert json.loads(result.paths["json"].read_text())["suite"]["soundfonts"] == [f"TimGM6mb.sf2 (sha256:{digest[:12]})"]
    # a suite rendered with another bank: eval would render its missing task with the bundled one
    shutil.copytree(root / "suite" / "pitch", tmp_path / "suite" / "pitch")
    info = json.loads((tmp_path / "suite" / "pitch" / "task.json").read_text())
    info["soundfont"] = {"file": "FluidR3_GM.sf2", "sha256": "0" * 64}
    (tmp_path / "suite" / "pitch" / "task.json").write_text(json.dumps(info))
    with pytest.raises(SuiteRunError, match=r"suite: its tasks were rendered with FluidR3_GM.sf2, and 'key' is missing"):
        run_suite(model_dir, tmp_path / "suite", tmp_path / "out", tasks=["pitch", "key"], **FAST)
    assert not (tmp_path / "suite" / "key").exists()


def test_bad_tasks_and_baselines_are_refused(tmp_path):
    with pytest.raises(SuiteRunError, match="unknown or no tasks.*'genre'"):
        run_suite(None, tmp_path / "s", tmp_path / "o", tasks=["genre"])
    with pytest.raises(SuiteRunError, match=r"unknown baselines \['mel'\]"):
        run_suite(None, tmp_path / "s", tmp_path / "o", baselines=["mel"])
    with pytest.raises(SuiteRunError, match="probe settings: probe kind must be 'linear' or 'mlp'"):
        run_suite(None, tmp_path / "s", tmp_path / "o", probe="svm")
    with pytest.raises(SuiteRunError, match="extraction settings: dtype must be one of"):
        run_suite(None, tmp_path / "s", tmp_path / "o", dtype="int8")
    assert not (tmp_path / "s").exists()  # refused before anything was rendered


def test_cache_key_separates_checkpoints_with_the_same_name(tmp_path):
    first = tiny_checkpoint(tmp_path / "a" / "model", seed=0)
    second = tiny_checkpoint(tmp_path / "b" / "model", seed=1)
    again = tiny_checkpoint(tmp_path / "c" / "model", seed=0)
    assert suite_runner.model_fingerprint(first) != suite_runner.model_fingerprint(second)
    assert suite_runner.model_fingerprint(first) == suite_runner.model_fingerprint(again)


def test_beat_probe_settings_cap_the_schedule():
    settings = suite_runner.ProbeSettings(kind="mlp", max_epochs=100, patience=10)
    clip, beat = settings.config("all"), settings.config("all", frame_level=True)
    assert (clip.kind, clip.max_epochs, clip.patience) == ("mlp", 100, 10)
    assert (beat.kind, beat.max_epochs, beat.patience) == ("linear", 30, 5)
    short = suite_runner.ProbeSettings(max_epochs=2, patience=1, beat_kind="mlp").config(0, frame_level=True)
    assert (short.kind, short.max_epochs, short.patience) == ("mlp", 2, 1)


def test_cli_default_model_says_random_and_prints_the_table(run, tmp_path, monkeypatch):
    root, model_dir, _ = run
    import mertkit.models.shipped

    # Stand the tiny checkpoint in for the demo model (same contract: a directory and is_random).
    monkeypatch.setattr(mertkit.models.shipped, "demo_model_dir", lambda: (model_dir, True))
    args = ["--suite", "synth", "--suite-dir", str(root / "suite"), "--out", str(tmp_path / "out"),
            "--tasks", "pitch,tempo", "--seeds", "0", "--lrs", "1e-2", "--epochs", "2", "--clips", str(CLIPS),
            "--random-init", "0", "--run-name", "cli", "--quiet"]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert "RANDOM weights" in result.stderr
    assert "RANDOM weights" in result.stdout  # the table's header says it too
    assert re.search(r"^\| pitch \| accuracy \|", result.stdout, re.MULTILINE)
    assert re.search(r"^\| beat \| beat_f \| not run", result.stdout, re.MULTILINE)
    assert (tmp_path / "out" / "cli" / "layers.png").is_file()
    assert "(n=1)" in result.stdout and "± 0.0" not in result.stdout  # one seed: no fake spread
    # the paired verdicts follow the table: pitch against each clip baseline (no random init asked)
    paired = result.stdout.split("## Paired on the same test clips")[1]
    for title in ("MFCC stats", "chroma stats", "log-mel stats"):
        assert re.search(rf"^\| pitch \| \S+ \| {title} \| [+-][0-9.]+ \| \[", paired, re.MULTILINE), title
    bad = CliRunner().invoke(evaluate, args[:-1] + ["--layers", "best"])
    assert bad.exit_code != 0 and "--layers" in bad.stderr


def test_cli_baselines_onset_gives_beat_its_rows(run):
    root, model_dir, _ = run
    args = ["-m", str(model_dir), "--suite-dir", str(root / "suite"), "--out", str(root / "out"), "--tasks", "beat,tempo",
            "--baselines", "onset", "--layers", "weighted", "--seeds", "0", "--lrs", "1e-2", "--epochs", "2",
            "--random-init", "0", "--run-name", "onset-only", "--quiet"]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output + result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| task |")).split(" | ")
    assert header[-3:] == ["onset strength (probe)", "onset peaks (no probe)", "floor |"]
    beat = next(line for line in result.stdout.splitlines() if line.startswith("| beat |")).split(" | ")
    tempo = next(line for line in result.stdout.splitlines() if line.startswith("| tempo |")).split(" | ")
    assert re.fullmatch(r"[0-9.]+ \(n=1\) \[.*\]", beat[-3]) and re.fullmatch(r"[0-9.]+ \(n=1\) \[.*\]", beat[-2])
    assert tempo[-3:-1] == ["n/a", "n/a"]  # onset serves beat only


def test_layer_index_out_of_range_is_refused_before_extraction(run, tmp_path):
    root, model_dir, _ = run
    with pytest.raises(SuiteRunError, match=r"layers \[7\] out of range: tiny-mert has hidden states 0\.\.3"):
        run_suite(model_dir, tmp_path / "suite", tmp_path / "out", tasks=["pitch"], layers=[7], clips_per_task=CLIPS, **FAST)
    assert not (tmp_path / "out").exists() and not (tmp_path / "suite").exists()


def test_unknown_model_is_refused_before_rendering(tmp_path):
    with pytest.raises(SuiteRunError, match="cannot load model 'no-such-model'"):
        run_suite("no-such-model", tmp_path / "suite", tmp_path / "out", clips_per_task=CLIPS, **FAST)
    assert not (tmp_path / "suite").exists()


def test_changed_audio_gets_a_fresh_cache(run, tmp_path):
    root, model_dir, result = run
    suite, out = tmp_path / "suite", tmp_path / "out"
    shutil.copytree(root / "suite" / "pitch", suite / "pitch")
    shutil.copytree(root / "out" / "features", out / "features")  # the first run's caches
    clip = suite / "pitch" / "clips" / "000000.wav"
    wave, rate = soundfile.read(clip)
    soundfile.write(clip, 0.5 * wave, rate)  # same manifest and task.json, other bytes
    run_suite(model_dir, suite, out, tasks=["pitch"], layers="weighted", baselines=["mfcc"], clips_per_task=CLIPS,
              random_init=0, **FAST)
    for parent in (out / "features" / result.model.cache_key, out / "features" / "baseline-mfcc"):
        caches = list(parent.glob("pitch-*"))
        assert len(caches) == 2, caches
        assert all(len(list(cache.rglob("*.safetensors"))) == CLIPS for cache in caches)


def test_cli_quick_sets_small_defaults_but_explicit_options_win(tmp_path, monkeypatch):
    calls = []

    def fake_run_suite(model, suite_dir, out_dir, **kwargs):
        calls.append((model, suite_dir, out_dir, kwargs))
        info = suite_runner.ModelInfo("m", "/m", "test", False, "0" * 32, 2, 24000)
        return suite_runner.SuiteRun(info, [], {}, "THE TABLE", {}, 0.0)

    monkeypatch.setattr(suite_runner, "run_suite", fake_run_suite)
    result = CliRunner().invoke(evaluate, ["--quick", "--seeds", "5,6", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    model, suite_dir, out_dir, kwargs = calls[0]
    assert model == [None] and out_dir == tmp_path and suite_dir == tmp_path / "suite" / "synth-seed0-clips40"
    assert kwargs["clips_per_task"] == 40 and kwargs["seeds"] == (5, 6)
    assert kwargs["lrs"] == (1e-3,) and kwargs["max_epochs"] == 30
    assert kwargs["tasks"] == ("pitch", "pitch_class", "instrument", "key", "tempo", "beat")
    assert kwargs["layers"] == ("all", "weighted") and kwargs["random_init"] == 1 and kwargs["seed"] is None
    assert kwargs["probe"] == "mlp" and kwargs["beat_probe"] == "linear"
    assert kwargs["baselines"] == ("mfcc", "chroma", "logmel", "onset")
    assert result.stdout.strip().endswith("THE TABLE")


def _strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path}: bare {constant} in JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_bench_suite_then_eval_suite_dir_two_models(tmp_path):
    """`mert bench-suite synth -o suite/` then `mert eval --suite-dir suite/ -m A -m B`: the rendered
    suite is used as it is (its seed too), both models and their random inits land in one report."""
    from mertkit.cli.bench_suite import bench_suite

    rendered = CliRunner().invoke(bench_suite, ["synth", "-o", str(tmp_path / "suite"), "--task", "pitch_class",
                                                "--clips", "12", "--seed", "5", "-q"])
    assert rendered.exit_code == 0, rendered.output
    suite_files = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "suite").rglob("*") if p.is_file()}
    first, second = tiny_checkpoint(tmp_path / "model-a", 0), tiny_checkpoint(tmp_path / "model-b", 1)
    args = ["--suite-dir", str(tmp_path / "suite"), "-m", str(first), "-m", str(second), "-o", str(tmp_path / "out"),
            "--tasks", "pitch_class", "--seeds", "0", "--lrs", "1e-2", "--epochs", "2", "--random-init", "1", "--probe", "linear",
            "--run-name", "cmp", "--device", "cpu", "-q"]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert {str(p): p.stat().st_mtime_ns for p in (tmp_path / "suite").rglob("*") if p.is_file()} == suite_files
    run = tmp_path / "out" / "cmp"
    payload = _strict_json(run / "results.json")
    assert payload["suite"]["seed"] == 5 and [m["name"] for m in payload["models"]] == ["model-a", "model-b"]
    rows = {(r["source"], r["kind"], r["setting"]) for r in payload["results"]}
    for name in ("model-a", "model-b"):
        assert {(name, "model", "all"), (f"{name} random init", "random_init", "all")} <= rows
    # each model is paired with its own random init (and the baselines), never with the other's
    assert {(row["model"], row["against"]) for row in payload["paired"] if "random init" in row["against"]} == {
        ("model-a", "model-a random init"), ("model-b", "model-b random init")}
    # and the two runs with each other, once, first minus second, on the same clips
    (between,) = [row for row in payload["paired"] if row["against"] == "model-b"]
    best = {r["source"]: r["test_mean"][r["metric"]] for r in payload["results"] if r["kind"] == "model" and r["setting"] == "all"}
    assert between["model"] == "model-a" and between["n_test"] == 2
    assert between["difference"] == pytest.approx(best["model-a"] - best["model-b"], abs=1e-9)
    assert "| pitch_class | model-a | model-b |" in result.stdout
    pooled = next(r for r in payload["results"] if r["source"] == "model-a random init" and r["setting"] == "all")
    assert [run_["seed"] for run_ in pooled["runs"]] == [0] and len(pooled["test_ci"]) == 2 and pooled["n_test"] == 2
    confusion = _strict_json(run / "confusion" / "pitch_class.json")
    assert len(confusion["labels"]) == 12 and np.sum(confusion["counts"]) == 2  # 2 test clips x 1 seed
    # each class's recall in every chosen-layer and baseline row, from that row's own confusion
    (per_class,) = payload["per_class"]
    assert per_class["task"] == "pitch_class" and sum(per_class["test_clips"]) == 2
    chosen = {f"{r['source']}: best layer" if r["kind"] != "baseline" else r["source"]: r
              for r in payload["results"] if r["setting"] == "all" or r["kind"] == "baseline"}
    assert {"model-a: best layer", "model-b random init: best layer", "MFCC stats"} <= set(per_class["recall"])
    assert len(per_class["recall"]) == len(chosen)
    counts = np.array(chosen["model-a: best layer"]["confusion"], dtype=float)
    for row, recall in enumerate(per_class["recall"]["model-a: best layer"]):
        clips = counts[row].sum()
        assert recall is None if clips == 0 else recall == pytest.approx(counts[row, row] / clips)
    section = (run / "results.md").read_text().split("## Per class")[1].split("## Detail")[0]
    assert "| class | test clips | model-a: best layer |" in section and section.count("\n| ") == 12 + 2
    for name in ("layers.png", "heatmap.png", "weights.png", "confusion/pitch_class.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    header = next(line for line in result.stdout.splitlines() if line.startswith("| task |")).split(" | ")
    row = next(line for line in result.stdout.splitlines() if line.startswith("| pitch_class |")).split(" | ")
    cells = dict(zip(header, row))
    # one probe seed: no spread to show
    assert "(n=1)" in cells["model-a: best layer"] and "±" not in cells["model-a: best layer"]
    assert "(n=1)" in cells["model-b random init: best layer"]
    again = CliRunner().invoke(evaluate, args)
    assert again.exit_code == 1 and "already holds a report" in again.stderr
