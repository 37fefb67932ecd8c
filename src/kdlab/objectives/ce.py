"""The CE teacher: cross-entropy alone (no term, no projection head)."""

from __future__ import annotations

from kdlab.registry import MethodSpec, register

register(MethodSpec(
    name="ce", role="objective", config=None, build=lambda block, ctx: None, scope="intra", order=0,
    summary="cross-entropy alone (the baseline teacher)",
    phrases=("ce", "cross entropy", "cross entropy only", "no contrastive", "none", "plain", "vanilla",
             "standard training", "without contrastive"),
))
