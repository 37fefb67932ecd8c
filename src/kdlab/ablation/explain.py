"""``kdlab ablate PLAN --explain``: how each ablation of a plan was read, and why; nothing runs.

Per ablation, in the plan's order: the knob chosen and the words of the ablated part that chose it (the
knob alias that scored best, and the part's words it matched), the runs it acts on, the runner-up knobs with their scores, the
values as read (the plan's text -> the value -> the config overrides), the metrics, and the warnings. An
ablation that does not resolve shows its problems and the fix instead of a knob.
"""

from __future__ import annotations

from kdlab.ablation.plan import Ablation
from kdlab.ablation.resolve import (
    Candidate,
    Grid,
    ResolvedAblation,
    Unresolved,
    format_value,
    grid_header,
    variant_line,
)
from kdlab.ablation.text import token_sim, tokens, weighted_tokens

__all__ = ["format_explain", "matched_words"]


def matched_words(text: str, phrase: str) -> list[str]:
    """The (normalised) words of ``text`` that the knob alias ``phrase`` matched."""
    alias = tokens(phrase)
    return list(dict.fromkeys(t for t in weighted_tokens(text)[0] if any(token_sim(t, a) > 0 for a in alias)))


def _runners_up(candidates: list[Candidate], chosen: str | None) -> str:
    """The best knobs other than ``chosen`` with their scores (and their share of the chosen knob's score)."""
    best = next((s for k, s, _ in candidates if k == chosen), None)
    parts = []
    for k, s, _ in [c for c in candidates if c[0] != chosen and c[1] > 0][:3]:
        share = f" ({100 * s / best:.0f} % of the chosen)" if best and best != float("inf") else ""
        parts.append(f"{k} {s:.2f}{share}")
    return "; ".join(parts) or "none"


def _head(index: int, ab: Ablation) -> str:
    line = f" (line {ab.line})" if ab.line else ""
    return f"[{index}] {ab.name}{line}: {ab.action} {ab.part!r}" + (
        f" with {list(ab.replacements)}" if ab.replacements else "")


def _acts_on(a: ResolvedAblation) -> str:
    """Which runs the knob changes: its stage, and the condition (``requires``) the base meets."""
    stage = {"both": "teacher and student"}.get(a.knob.stage, a.knob.stage)
    return f"{stage} runs" + (f" where {a.knob.requires}" if a.knob.requires else "")


def _explain_resolved(a: ResolvedAblation) -> list[str]:
    text = a.ablation.part or a.ablation.name
    if a.phrase:
        words = ", ".join(matched_words(text, a.phrase)) or "(none)"
        chosen = f"the alias {a.phrase!r}, on the words: {words} (score {a.score:.2f})"
        if "; " in a.how:  # what the resolver read beyond the alias (a switch's size, parts removed together)
            chosen += "; " + a.how.split("; ", 1)[1]
    else:
        chosen = a.how  # --map
    lines = [
        f"    knob:        {a.knob.name} = {' + '.join(a.knob.paths)} ({a.knob.description})",
        f"    chosen by:   {chosen}",
        f"    acts on:     {_acts_on(a)}",
        f"    runners-up:  {_runners_up(a.candidates, a.knob.name)}",
        f"    base value:  {format_value(a.base_value)}" + (f"; {a.base_note}" if a.base_note else ""),
        "    values read:",
    ]
    lines += [f"      {variant_line(v)}" for v in a.variants]
    lines.append(f"    metrics:     {'; '.join(m.describe() for m in a.metrics)}")
    lines += [f"    warning:     {w}" for w in a.warnings] or ["    warnings:    none"]
    return lines


def _explain_unresolved(u: Unresolved) -> list[str]:
    lines = ["    NOT RESOLVED (not run):"]
    for p in u.problems:
        lines += [f"      {line}" for line in p.lines("problem")]
    lines.append(f"    best knobs:  {_runners_up(u.candidates, None)}")
    return lines


def format_explain(grid: Grid) -> str:
    """The --explain text of a resolved grid (see module doc)."""
    entries: list[tuple[int, Ablation, list[str]]] = [(a.index, a.ablation, _explain_resolved(a)) for a in grid.ablations]
    entries += [(u.index, u.ablation, _explain_unresolved(u)) for u in grid.unresolved]
    lines = grid_header(grid)
    for index, ab, body in sorted(entries, key=lambda e: e[0]):
        lines += ["", _head(index, ab)] + body
    lines += ["", f"Resolved: {len(grid.ablations)}; not resolved: {len(grid.unresolved)}. --explain runs nothing."]
    return "\n".join(lines)
