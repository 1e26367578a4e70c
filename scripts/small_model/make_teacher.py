"""Build the acoustic teacher used for mertkit's shipped small model.

No EnCodec weights can be downloaded here, so the teacher is EnCodec-24kHz-shaped with a
random (seeded) SEANet encoder and residual-VQ codebooks initialised from the corpus: codebook
k holds 1024 residual vectors sampled at stage k (EnCodec's own codebooks start the same way,
before k-means). Its 8 x 1024 codes at 75 Hz are deterministic functions of the audio — a
random-projection quantiser in the spirit of BEST-RQ — not the released EnCodec codes.

    python scripts/small_model/make_teacher.py CORPUS_DIR OUT_DIR [--clips 200] [--seed 0]

OUT_DIR gets config.json + model.safetensors (transformers' EnCodec names), which
`mert labels --teacher encodec --weights OUT_DIR` reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from mertkit.audio import load_audio
from mertkit.pretrain.teachers.encodec import EncodecConfig, EncodecEncoder, load_encodec


def latent_frames(model: EncodecEncoder, files: list[Path]) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for path in files:
            wav = torch.from_numpy(load_audio(path, 24000))[None, None]
            rows.append(model.encoder(wav)[0].t())  # [frames, D]
    return torch.cat(rows)


def init_codebooks(model: EncodecEncoder, latents: torch.Tensor, n_q: int, gen: torch.Generator) -> None:
    residual = latents.clone()
    size = model.config.codebook_size
    for vq in model.quantizer.layers[:n_q]:
        pick = torch.randperm(len(residual), generator=gen)[:size]
        vq.codebook.embed.copy_(residual[pick])
        codes = vq.codebook.nearest(residual)
        residual = residual - vq.codebook.embed[codes]
        used = len(torch.unique(codes))
        print(f"stage: {used}/{size} codes used, residual rms {residual.pow(2).mean().sqrt():.4f}")
    for vq in model.quantizer.layers[n_q:]:  # unused at 6 kbps; keep them valid, distinct vectors
        vq.codebook.embed.copy_(torch.randn(vq.codebook.embed.shape, generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = EncodecConfig()
    model = EncodecEncoder(config).eval()
    files = sorted(args.corpus.rglob("*.wav"))[: args.clips]
    latents = latent_frames(model, files)
    print(f"{len(files)} clips -> {len(latents)} latent frames")
    with torch.no_grad():
        init_codebooks(model, latents, config.quantizers_for_bandwidth(6.0), gen)
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "model.safetensors"))
    hf = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    hf["sampling_rate"] = hf.pop("sample_rate")
    hf["audio_channels"] = hf.pop("channels")
    hf["model_type"] = "encodec"
    (args.out / "config.json").write_text(json.dumps(hf, indent=2))
    load_encodec(args.out)  # strict read-back
    print(f"teacher -> {args.out}")


if __name__ == "__main__":
    main()
