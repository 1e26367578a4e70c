"""music2vec-style pre-training: data2vec regression onto an EMA teacher.

Selected with `objective: "data2vec"` in the config; needs no labels. Per batch:

* the teacher (an exponential moving average of the student backbone, in eval mode, no
  grad) reads the *clean* unmasked audio; the target of every frame is the average of its
  top `d2v_top_k` layer outputs, each instance-normalised over the item's valid frames;
* the student reads the (optionally mixed) audio with the masked frames replaced by
  `masked_spec_embed`; `regression_head` Linear(H, H) of its last layer predicts the target
  at masked frames; the loss is the mean squared error over channels, summed over masked
  frames (divided by the global masked count by the trainer) + penalty_weight * feature
  penalty (set penalty_weight=0 for plain data2vec);
* after every update the teacher moves towards the student: decay goes linearly from
  `d2v_ema_decay` to `d2v_ema_end_decay` over `d2v_ema_anneal_updates`, then stays.

Simplifications against fairseq's data2vec, stated: the whole backbone (conv front-end
included) is averaged, targets are layer outputs (not the FFN outputs before the last
LayerNorm), and the squared error is a mean over channels rather than a sum / sqrt(H).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mertkit.models.hubert.model import MertModel
from mertkit.pretrain.pretrain_config import PretrainConfig
from mertkit.pretrain.mlm_model import Backbone, Counts, LossSums, PretrainInputError, student_input


def masked_instance_norm(x: Tensor, valid: Tensor, eps: float = 1e-5) -> Tensor:
    """x [B, F, H] normalised per item and channel over its valid frames (valid [B, F] bool)."""
    weight = valid[:, :, None].to(x.dtype)
    count = weight.sum(1, keepdim=True).clamp(min=1)
    mean = (x * weight).sum(1, keepdim=True) / count
    var = ((x - mean).pow(2) * weight).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps)


def ema_decay_at(cfg: PretrainConfig, update: int) -> float:
    if update >= cfg.d2v_ema_anneal_updates:
        return cfg.d2v_ema_end_decay
    progress = update / max(cfg.d2v_ema_anneal_updates, 1)
    return cfg.d2v_ema_decay + (cfg.d2v_ema_end_decay - cfg.d2v_ema_decay) * progress


class Data2VecPretrainModel(Backbone):
    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        hidden = self.backbone.config.hidden_size
        self.regression_head = nn.Linear(hidden, hidden)
        self.teacher: MertModel = copy.deepcopy(self.backbone)
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> Data2VecPretrainModel:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops anything
        return self

    @torch.no_grad()
    def targets(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
        """[B, F, H]: mean of the teacher's top-k layer outputs, each instance-normalised."""
        out = self.teacher(wave, lengths)
        frames = out.hidden_states[0].shape[1]
        valid = (torch.ones(wave.shape[0], frames, dtype=torch.bool, device=wave.device) if out.frame_lengths is None
                 else torch.arange(frames, device=wave.device)[None] < out.frame_lengths[:, None])
        top = out.hidden_states[-self.config.d2v_top_k:]
        return sum(masked_instance_norm(h.float(), valid) for h in top) / len(top)

    def forward(
        self,
        wave: Tensor,
        lengths: Tensor | None,
        labels: Tensor | None,
        mask: Tensor,
        *,
        mixture_generator: torch.Generator | None = None,
    ) -> LossSums:
        frames = self.frame_count(wave.shape[1])
        if mask.shape != (wave.shape[0], frames):
            raise PretrainInputError(f"mask must be [{wave.shape[0]}, {frames}], got {tuple(mask.shape)}")
        target = self.targets(wave, lengths)
        wave = student_input(wave, lengths, self.config, mixture_generator)
        states, valid, square = self.encode(wave, lengths, mask)
        selected = mask & valid
        predicted = self.regression_head(states[-1][selected]).float()
        regression = (predicted - target[selected]).pow(2).mean(-1).sum()
        sums = {"regression": regression, "penalty": (square * valid).sum()}
        return LossSums(sums, None, int(selected.sum()), int(valid.sum()))

    def total_loss(self, out: LossSums, counts: Counts) -> Tensor:
        loss = out.sums["regression"] / max(counts.masked_frames, 1)
        return loss + self.config.penalty_weight * out.sums["penalty"] / max(counts.valid_frames, 1)

    @staticmethod
    def metrics(sums: dict[str, Tensor], correct: Tensor | None, counts: Counts) -> dict[str, object]:
        return {
            "regression": float(sums["regression"]) / max(counts.masked_frames, 1),
            "penalty": float(sums["penalty"]) / max(counts.valid_frames, 1),
        }

    @torch.no_grad()
    def after_update(self, update: int) -> None:
        decay = ema_decay_at(self.config, update)
        for teacher, student in zip(self.teacher.parameters(), self.backbone.parameters()):
            teacher.mul_(decay).add_(student.detach(), alpha=1 - decay)
