"""CRD (Tian et al., ICLR 2020): NCE contrastive representation distillation with two memory banks.

Student and teacher pooled features are embedded (linear + l2 norm) to ``feat_dim``. Two banks of
``num_train × feat_dim`` hold momentum-averaged embeddings: ``memory_s`` (student embeddings) and
``memory_t`` (teacher embeddings). The student anchor is contrasted with teacher-bank entries and the
teacher anchor with student-bank entries, each entry scored as ``exp(<v, m>/τ) / Z`` and fed to the NCE
binary loss with noise distribution 1/N. The normalising constants Z are set from the first batch (as in
RepDistiller) and kept in the ``nce_z`` buffer so a resumed run reuses them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import Strict
from kdlab.distillers._common import full_precision, wide
from kdlab.distillers.base import DistillContext, DistillLoss, StepContext
from kdlab.engine.distributed import gather_cat
from kdlab.registry import CONTRASTIVE_TAU, MethodSpec, knob, register


class CRDConfig(Strict):
    weight: float = Field(0.8, ge=0)
    feat_dim: int = Field(128, ge=1)
    nce_k: int = Field(16384, ge=1, description="negatives drawn from the memory bank per anchor")
    nce_t: float = Field(0.07, gt=0)
    nce_m: float = Field(0.5, ge=0, le=1, description="memory bank momentum")


_EPS = 1e-7


class Embed(nn.Module):
    """Linear map to ``feat_dim`` followed by l2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(wide(self.linear(x.flatten(1))), dim=1)


def nce_loss(p: Tensor, num_data: int) -> Tensor:
    """NCE loss of RepDistiller's ``ContrastLoss`` on normalised scores ``p`` (B, 1+K), column 0 positive.

    ``-(Σ_b log(p⁺/(p⁺ + K/N + ε)) + Σ_{b,k} log((K/N)/(p⁻ + K/N + ε))) / B``.
    """
    b, k = p.shape[0], p.shape[1] - 1
    noise = k / float(num_data)
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + _EPS))
    log_neg = torch.log(noise / (p[:, 1:] + noise + _EPS))
    return -(log_pos.sum() + log_neg.sum()) / b


def _bank_scores(memory: Tensor, v: Tensor, idx: Tensor) -> Tensor:
    """``<memory[idx[b, j]], v[b]>`` for every (b, j), without materialising a (B, 1+K, d) gather when
    scoring the whole bank is cheaper."""
    n, (b, k1) = memory.shape[0], idx.shape
    if n <= b * k1:  # (B, N) -> (B, 1+K); a copy, as the bank is updated in place before backward
        return (v @ memory.clone().t()).gather(1, idx)
    return torch.bmm(memory[idx], v.unsqueeze(2)).squeeze(2)


def crd_nce_loss(
    v_s: Tensor, v_t: Tensor, memory_s: Tensor, memory_t: Tensor, idx: Tensor, T: float = 0.07,
    z: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CRD's two-sided NCE loss on l2-normalised embeddings ``v_s``, ``v_t`` ``(B, d)`` and banks
    ``memory_s``, ``memory_t`` ``(N, d)``; ``idx`` ``(B, 1+K)`` holds each anchor's positive row (column 0)
    and its K negatives. Scores ``exp(<v, m>/T) / Z``: the student anchor against the teacher bank, the
    teacher anchor against the student bank, each through :func:`nce_loss` with noise ``K/N``.

    ``z`` is ``(2,)`` [Z_student_anchor, Z_teacher_anchor]; ``None`` or negative entries are set from this
    batch as ``mean(scores) · N`` (RepDistiller's first-batch rule). Returns ``(loss, z used)``.
    The banks are read as constants (no gradient); they are cast to the embeddings' dtype.
    """
    with full_precision(v_s):
        v_s, v_t = wide(v_s), wide(v_t)
        n = memory_s.shape[0]
        mem_s, mem_t = memory_s.detach().to(v_s.dtype), memory_t.detach().to(v_t.dtype)
        out_s = torch.exp(_bank_scores(mem_t, v_s, idx) / T)  # student anchor vs teacher bank
        out_t = torch.exp(_bank_scores(mem_s, v_t, idx) / T)  # teacher anchor vs student bank
        with torch.no_grad():
            first = torch.stack([out_s.mean(), out_t.mean()]) * n
            z = first if z is None else torch.where(z < 0, first, z.detach().to(first.dtype))
        return nce_loss(out_s / z[0], n) + nce_loss(out_t / z[1], n), z


class CRD(DistillLoss):
    """Config: ``distill.crd.weight`` (0.8), ``.feat_dim`` (128), ``.nce_k`` (16384), ``.nce_t`` (0.07),
    ``.nce_m`` (0.5). The banks hold ``ctx.num_train`` rows."""

    def __init__(self, cfg: CRDConfig, ctx: DistillContext):
        super().__init__()
        if ctx.num_train < 1:
            raise ValueError("distill.crd needs the training-set size (DistillContext.num_train) for its memory banks")
        self.weight, self.k, self.T, self.momentum = cfg.weight, cfg.nce_k, cfg.nce_t, cfg.nce_m
        self.num_data = ctx.num_train
        self.embed_s = Embed(ctx.student_probe.pooled_dim, cfg.feat_dim)
        self.embed_t = Embed(ctx.teacher_probe.pooled_dim, cfg.feat_dim)
        bound = 1.0 / math.sqrt(cfg.feat_dim / 3.0)
        self.register_buffer("memory_s", torch.rand(ctx.num_train, cfg.feat_dim) * (2 * bound) - bound)
        self.register_buffer("memory_t", torch.rand(ctx.num_train, cfg.feat_dim) * (2 * bound) - bound)
        # Z for [student-anchor scores, teacher-anchor scores]; negative = not set yet
        self.register_buffer("nce_z", torch.full((2,), -1.0))
        #: test/experiment hook: ``fn(batch_size, device) -> (B, K) long`` replaces uniform sampling
        self.negative_sampler: Callable[[int, torch.device], Tensor] | None = None

    def sample_negatives(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B, nce_k)`` bank indices drawn uniformly with replacement, on the training device."""
        if self.negative_sampler is not None:
            return self.negative_sampler(batch_size, device)
        return torch.randint(0, self.num_data, (batch_size, self.k), device=device)

    def forward(self, s, t, batch, step: StepContext) -> dict[str, Tensor]:
        index = batch.index
        v_s = self.embed_s(s.pooled)
        v_t = self.embed_t(t.pooled.detach())
        idx = torch.cat([index[:, None], self.sample_negatives(index.shape[0], index.device)], dim=1)
        loss, z = crd_nce_loss(v_s, v_t, self.memory_s, self.memory_t, idx, self.T, z=self.nce_z)
        with torch.no_grad():  # Z is set once, from the first batch (no host sync: z holds it from then on)
            self.nce_z.copy_(z.detach().to(self.nce_z.dtype))
        self._update_memory(index, v_s.detach(), v_t.detach())
        return {"crd": self.weight * loss}

    @torch.no_grad()
    def _update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        # data parallel: every rank applies every rank's rows, so the banks stay identical
        index, v_s, v_t = gather_cat(index), gather_cat(v_s), gather_cat(v_t)
        m = self.momentum
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            row = bank[index].float() * m + v * (1.0 - m)
            bank.index_copy_(0, index, F.normalize(row, dim=1).to(bank.dtype))

    def stats(self) -> dict[str, float]:
        z = self.nce_z.tolist()
        return {"crd_z_s": z[0], "crd_z_t": z[1]}


KNOBS = (
    knob("crd.weight", "distill.crd.weight", "float", ["crd weight", "crd loss weight", "weight of crd", "beta crd"],
       "weight of CRD", off_value=0.0, requires="distill.methods~crd"),
    knob("crd.nce_k", "distill.crd.nce_k", "int",
       ["crd negatives", "number of crd negatives", "nce k", "crd negative samples", "negatives drawn from the memory bank"],
       "CRD negatives per anchor", requires="distill.methods~crd"),
    knob("crd.nce_t", "distill.crd.nce_t", "float", ["crd temperature", "nce temperature", "nce t"],
       "CRD's NCE temperature", requires="distill.methods~crd", typical=CONTRASTIVE_TAU),
    knob("crd.nce_m", "distill.crd.nce_m", "float", ["crd momentum", "memory bank momentum", "nce momentum", "crd memory momentum"],
       "momentum of CRD's memory bank", requires="distill.methods~crd"),
    knob("crd.feat_dim", "distill.crd.feat_dim", "int", ["crd feature dimension", "crd embedding dimension", "crd feat dim"],
       "CRD embedding size", requires="distill.methods~crd"),
)

register(MethodSpec(
    name="crd", role="distiller", config=CRDConfig, build=CRD, knobs=KNOBS,
    summary="Tian et al., ICLR 2020: NCE contrastive distillation with two memory banks",
    phrases=('crd', 'contrastive representation distillation'),
    terms={"crd": ("crd", "contrastive")},
    list_aliases=('crd', 'contrastive representation distillation', 'crd loss'),
))
