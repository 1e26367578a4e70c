"""Writes src/mertkit/assets/example.flac: 8 s of synthetic music (additive-synth chords, a bass
line and a click track), 44.1 kHz stereo so the demo exercises resampling and downmixing."""
import numpy as np
import soundfile as sf

SR = 44100
rng = np.random.default_rng(0)


def note(freq, seconds, amp=0.2):
    t = np.arange(int(seconds * SR)) / SR
    env = np.exp(-3.0 * t) * np.minimum(1.0, t * 200)
    wave = sum(amp / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, 6))
    return wave * env


out = np.zeros((8 * SR, 2))
chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]  # C Am F G
for bar in range(4):
    for beat in range(4):
        start = (bar * 2 + beat * 0.5) * SR
        for i, midi in enumerate(chords[bar]):
            seg = note(440 * 2 ** ((midi - 69) / 12), 0.5, 0.12)
            s = int(start)
            out[s:s + len(seg), i % 2] += seg
        bass = note(440 * 2 ** ((chords[bar][0] - 12 - 69) / 12), 0.45, 0.3)
        out[int(start):int(start) + len(bass)] += bass[:, None]
        click = rng.standard_normal(800) * np.exp(-np.arange(800) / 80) * 0.3
        out[int(start):int(start) + 800] += click[:, None]
out /= np.abs(out).max() * 1.1
sf.write("src/mertkit/assets/example.flac", out.astype(np.float32), SR, subtype="PCM_16")
