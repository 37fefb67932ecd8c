"""The statistics of ablation tables: mean ± sample std per row, and Δ vs base over paired seeds.

Seed ``s`` of a variant and seed ``s`` of its base see the same initialisation and data order, so the
difference ``variant_s - base_s`` removes the seed-to-seed spread the two share. Δ is the mean of these
differences over the seeds where both runs finished (a seed missing on either side is left out of the
pairing); its 95 % confidence interval is ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` with ``sd`` the sample
standard deviation of the ``n`` differences (Student's t, ``n - 1`` degrees of freedom). With one pair there
is a difference but no interval; with one value there is a mean but no standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["Summary", "PairedDelta", "summarize_values", "paired_delta", "t_quantile", "finite"]

LEVEL = 0.95


def finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (scipy, a dependency of scikit-learn)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class Summary:
    """Mean and sample std of the finite values of one cell; ``std`` is None for fewer than two values."""

    mean: float | None
    std: float | None
    n: int


@dataclass(frozen=True)
class PairedDelta:
    """Δ = mean of (variant - base) over ``pairs`` paired seeds; ``lo``/``hi``: its 95 % CI (None below 2 pairs)."""

    mean: float | None
    lo: float | None
    hi: float | None
    pairs: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": None if self.lo is None else [self.lo, self.hi], "pairs": self.pairs,
                "excludes_zero": self.excludes_zero}


def summarize_values(values: Iterable[object]) -> Summary:
    vals = [float(v) for v in values if finite(v)]
    if not vals:
        return Summary(None, None, 0)
    m, sd = _mean_sd(vals)
    return Summary(m, sd, len(vals))


def paired_delta(variant: Mapping[int, object], base: Mapping[int, object], level: float = LEVEL) -> PairedDelta:
    """Δ of ``variant`` vs ``base`` (seed -> value) over the seeds with a finite value on both sides."""
    seeds = sorted(s for s in variant if s in base and finite(variant[s]) and finite(base[s]))
    diffs = [float(variant[s]) - float(base[s]) for s in seeds]  # type: ignore[arg-type]
    if not diffs:
        return PairedDelta(None, None, None, 0)
    m, sd = _mean_sd(diffs)
    if sd is None:
        return PairedDelta(m, None, None, 1)
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return PairedDelta(m, m - half, m + half, len(diffs))
