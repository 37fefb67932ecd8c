"""Parse an AblationBench ablation plan: rendered markdown or JSONL -> :class:`Plan`.

Markdown (what the AblationBench viewer renders)::

    # lm-planner/<model>/<Paper_Title>
    <div ...><h2>Reasoning Trace</h2> ... free text, ignored ... </div>
    <div ...><h2>Ablation Plan</h2>
    ### <name>
    - **Ablated Part**: <free text>
    - **Action**: REMOVE | REPLACE | ADD
    - **Replacement**:
      - <value>
      - <value>
    - **Metrics**: <metric>, <metric>
    </div>

Plans written by hand are read too: field blocks without a ``###`` heading (named by the bold or numbered
line above them) and Markdown tables with "Ablated Part" and "Action" columns.

Only the "Ablation Plan" section is read (the reasoning trace may talk about ablations too). Files carry
damaged characters (mojibake of Greek letters, emoji, dashes): nothing here depends on them.

JSONL: one object per line with ``name``, ``ablated_part``, ``action``, ``replacement`` (list, string
or null) and ``metrics`` (list or string). A ``.json`` file holding a list of such objects is accepted too.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from kdlab.sweep.grid import SweepError

__all__ = ["Ablation", "Plan", "PlanError", "AblationError", "ACTIONS", "parse_plan", "parse_plan_text"]

ACTIONS = ("REMOVE", "REPLACE", "ADD")


class AblationError(SweepError):
    """Base class of every user-facing ablation error (the CLI prints the message and exits 2)."""


class PlanError(AblationError):
    """The plan file cannot be read as an ablation plan; the message names the file, line and fix."""


@dataclass(frozen=True)
class Ablation:
    name: str
    part: str
    action: str  # REMOVE | REPLACE | ADD
    replacements: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    line: int = 0  # 1-based line of the ablation in the source file (0: unknown)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ablated_part": self.part,
            "action": self.action,
            "replacement": list(self.replacements),
            "metrics": list(self.metrics),
            "line": self.line,
        }


@dataclass
class Plan:
    title: str
    ablations: list[Ablation]
    source: str = "<text>"
    format: str = "markdown"  # markdown | jsonl
    extra: dict = field(default_factory=dict)
    text: str = ""  # the plan as read (its preamble may state the setting it means)

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "source": self.source,
            "format": self.format,
            "ablations": [a.to_dict() for a in self.ablations],
        }

    def text_for_scope(self) -> str:
        """The text that says what the plan is about: title, names and ablated parts (not the trace)."""
        bits = [self.title] + [f"{a.name} {a.part} {' '.join(a.replacements)}" for a in self.ablations]
        return "\n".join(bits)


# ------------------------------------------------------------------------------------------ helpers
_TAG = re.compile(r"<[^>]*>")
_BOLD = re.compile(r"(\*\*|__|`)")


def clean_inline(text: str) -> str:
    """Drop HTML tags, entities, bold/code markers and surrounding whitespace/punctuation noise."""
    text = html.unescape(_TAG.sub(" ", text))
    text = _BOLD.sub("", text)
    text = text.replace("\u00a0", " ").replace("\ufeff", "")
    return re.sub(r"\s+", " ", text).strip()


def _read(path: Path) -> str:
    if not path.exists():
        raise PlanError(f"plan file {str(path)!r} not found")
    if path.is_dir():
        raise PlanError(f"plan {str(path)!r} is a folder; pass a plan file (.md/.txt or .jsonl)")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Files carry mojibake already; never fail on bytes, just keep going.
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


_SET_LABEL = re.compile(r"^[^\[{]{0,24}?(?:\u2208|=|:|\bin\b)\s*(?=[\[{])")  # "λ ∈ {...}", "delta in [...]"


def _split_list(text: str) -> list[str]:
    """Split an inline list: ``[a, b]``, ``{a, b}`` (after an optional ``λ ∈``), ``a; b``, numeric ``0.1, 0.5``
    or ``0.1 / 0.5``; otherwise one item."""
    t = text.strip()
    if not t:
        return []
    m = _SET_LABEL.match(t)
    if m and t.endswith(("]", "}")):
        t = t[m.end():]
    if t.startswith("{") and t.endswith("}") and "{" not in t[1:-1]:
        t = "[" + t[1:-1] + "]"
    if t.startswith("[") and t.endswith("]"):
        try:
            data = json.loads(t)
            if isinstance(data, list):
                return [str(x) for x in data]
        except json.JSONDecodeError:
            pass
        t = t[1:-1]
        return [p.strip().strip("'\"") for p in t.split(",") if p.strip()]
    if ";" in t:
        return [p.strip() for p in t.split(";") if p.strip()]
    parts = [p.strip() for p in t.split(",")]
    num = re.compile(r"^[^\d\s]{0,12}\s*=?\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*%?$")
    if len(parts) > 1 and all(num.match(p) for p in parts if p):
        return [p for p in parts if p]
    parts = [p.strip() for p in re.split(r"\s+/\s+|\s+vs\.?\s+", t)]
    if len(parts) > 1 and all(num.match(p) for p in parts if p):
        return [p for p in parts if p]
    return [t]


_METRIC_SEP = re.compile(r"[()\[\]]|\s*[,;]\s*(?:and\s+)?|\s+and\s+", re.I)
#: a piece starting with one of these words continues the metric before it ("... of the teacher and of the student")
_CONTINUES = re.compile(r"(?:of|between|for|on|in|with|at|across|under|over|from|by|to|during|among)\b(?!-)", re.I)
#: a piece that names no measurement, only whose or which one ("Student and teacher top-1", "top-1 of teacher and
#: student", "training and test loss")
_BARE = re.compile(r"(?:the\s+)?(?:teacher|student|train(?:ing)?|test|validation)s?", re.I)
_OPEN_BETWEEN = re.compile(r"\bbetween\b(?!.*\band\b)", re.I)  # "KL divergence between teacher" + "student outputs"


def split_metrics(text: str) -> list[str]:
    """A plan's list of metrics -> its metrics: split at commas, semicolons and "and", but never inside
    parentheses ("calibration (ECE, 15 bins)" is one metric), and a piece that cannot stand alone stays with the
    metric before it: one starting with "of", "between", "for"... ("soft-label entropy of the teacher and of the
    student"), the "B" of "between A and B", and a bare stage or split joined by "and" ("Student and teacher
    top-1 accuracy", "training and test loss")."""
    t = clean_inline(text)
    pieces: list[tuple[str, str]] = []  # (the separator before it, the piece)
    start, sep, depth = 0, "", 0
    for m in _METRIC_SEP.finditer(t):
        if m.group() in "([":
            depth += 1
        elif m.group() in ")]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            pieces.append((sep, t[start:m.start()]))
            start, sep = m.end(), m.group()
    pieces.append((sep, t[start:]))
    out: list[str] = []
    for sep, piece in pieces:
        piece = re.sub(r"^[\s\-*+]+|[\s.]+$", "", piece)
        if not piece:
            continue
        joined_by_and = sep.strip().lower().endswith("and")
        if out and (_CONTINUES.match(piece) or joined_by_and and (
                _BARE.fullmatch(piece) or _BARE.fullmatch(out[-1]) or _OPEN_BETWEEN.search(out[-1]))):
            out[-1] += sep + piece
        else:
            out.append(piece)
    return out


_SAME_AS_ABOVE = re.compile(r"(?:the\s+)?(?:same(?:\s+metrics?)?\s+)?as\s+(?:above|before|previously|(?:in\s+)?the\s+"
                            r"previous(?:\s+(?:one|ablation))?)|(?:the\s+)?same(?:\s+metrics?)?|ditto", re.I)


def _inherit_metrics(ablations: list[Ablation]) -> list[Ablation]:
    """"Metrics: same as above" (or "as before", "same"): the metrics of the ablation before it; the first
    ablation has none above, so it gets the default (top-1)."""
    out: list[Ablation] = []
    for ab in ablations:
        above = out[-1].metrics if out else ()
        mets = [m for item in ab.metrics for m in (above if _SAME_AS_ABOVE.fullmatch(item.strip(" .")) else (item,))]
        out.append(replace(ab, metrics=tuple(dict.fromkeys(mets))))
    return out


# --------------------------------------------------------------------------------------- markdown
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FIELD = re.compile(
    r"^\s*(?:[-*+]|\d+[.)])?\s*(?:\*\*|__)?\s*"
    r"(ablated[ _-]*(?:part|component|module|element)s?|(?:part|component)\s*(?:to\s*ablate|ablated)?|"
    r"actions?|replacements?|replacement[ _-]*values?|values?|variants?|"
    r"(?:evaluation\s+)?metrics?|(?:ablation\s*)?name)"
    r"\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*(.*)$",
    re.IGNORECASE,
)
_ITEM = re.compile(r"^(\s*)(?:[-*+]|\d+[.)])\s+(.*)$")
#: a bold field this reader does not use ("- **Seeds**: 3", "**Expected outcome:**"): it ends the field above
_OTHER_FIELD = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*(?:\*\*|__)(?!\s*(?:ablation|experiment|study)\s*\d)"
                          r"[^*_\n]{1,40}?(?::\s*(?:\*\*|__)|(?:\*\*|__)\s*:)", re.IGNORECASE)
_PLAN_HEADER = re.compile(r"ablation\s*plan", re.IGNORECASE)
_TRACE_HEADER = re.compile(r"reasoning\s*trace", re.IGNORECASE)


def _field_key(label: str) -> str:
    lab = label.lower()
    if lab.startswith("action"):
        return "action"
    if lab.startswith(("replacement", "value", "variant")):
        return "replacement"
    if "metric" in lab:
        return "metrics"
    if lab.endswith("name"):
        return "name"
    return "part"


def _is_setext(lines: list[str], i: int) -> bool:
    """``lines[i]`` is a heading underlined by ``===`` or ``---`` on the next line."""
    return i + 1 < len(lines) and bool(lines[i].strip()) and bool(re.fullmatch(r"\s{0,3}(=+|-{3,})\s*", lines[i + 1]))


def _plan_section(lines: list[str]) -> tuple[int, int] | None:
    """Line range of the "Ablation Plan" section (HTML <h2>, markdown or underlined heading), or None."""
    start = None
    for i, line in enumerate(lines):
        text = clean_inline(line)
        is_heading = bool(re.search(r"<h[1-6]", line, re.I)) or bool(_HEADING.match(line)) or _is_setext(lines, i)
        if is_heading and _PLAN_HEADER.search(text) and len(text) < 80:
            start = i + 1  # the last such heading wins (a trace may quote the words)
    if start is None:
        return None
    end = len(lines)
    for j in range(start, len(lines)):
        text = clean_inline(lines[j])
        if (re.search(r"<h[12]", lines[j], re.I) or re.match(r"^\s{0,3}#{1,2}\s", lines[j])) and _TRACE_HEADER.search(text):
            end = j
            break
    return start, end


def _trace_range(lines: list[str]) -> tuple[int, int] | None:
    for i, line in enumerate(lines):
        is_heading = bool(re.search(r"<h[1-6]", line, re.I)) or bool(_HEADING.match(line))
        if is_heading and _TRACE_HEADER.search(clean_inline(line)):
            for j in range(i + 1, len(lines)):
                if re.search(r"</div>", lines[j], re.I) or (
                    (re.search(r"<h[12]", lines[j], re.I) or re.match(r"^\s{0,3}#{1,2}\s", lines[j]))
                ):
                    return i, j
            return i, len(lines)
    return None


def _title(lines: list[str], fallback: str) -> str:
    for line in lines:
        m = re.match(r"^\s{0,3}#\s+(.*)$", line)
        if m:
            t = clean_inline(m.group(1))
            t = t.rstrip("/").split("/")[-1]
            return re.sub(r"[_]+", " ", t).strip() or fallback
    for line in lines:
        m = re.match(r"^\s*title\s*:\s*(.+)$", line, re.I)
        if m:
            return clean_inline(m.group(1)).strip("'\"")
    return fallback


def _parse_markdown(text: str, source: str) -> Plan:
    lines = text.split("\n")
    title = _title(lines, Path(source).stem)
    section = _plan_section(lines)
    if section is None:
        lo, hi = 0, len(lines)
        skip = _trace_range(lines)
    else:
        lo, hi = section
        skip = None

    blocks: list[tuple[str, int, list[tuple[int, str]]]] = []  # (name, line, body lines)
    current: tuple[str, int, list[tuple[int, str]]] | None = None
    seen: set[str] = set()  # field keys of the current block
    prose = ""  # the last non-field text line: the name of a block that has no heading
    prose_line = 0  # its 1-based line number
    for i in range(lo, hi):
        if skip and skip[0] <= i < skip[1]:
            continue
        line = lines[i]
        m = _HEADING.match(line)
        if m and len(m.group(1)) >= 2 and not _PLAN_HEADER.fullmatch(clean_inline(m.group(2)) or "x"):
            current = (clean_inline(m.group(2)), i + 1, [])
            blocks.append(current)
            seen, prose = set(), ""
            continue
        if re.search(r"</div>", line, re.I) and current is not None and section is None:
            current = None
            continue
        fm = _FIELD.match(clean_inline(line) if "<" in line else line)
        key = _field_key(fm.group(1)) if fm else None
        if key in ("part", "name", "action") and (current is None or key in seen or (key == "name" and "part" in seen)):
            # fields without a heading (or a second Ablated Part or Action under one heading): a new ablation,
            # named by the bold/numbered line above it, which belongs to it and not to the block before
            if current is not None and prose_line:
                current[2][:] = [(ln, text) for ln, text in current[2] if ln < prose_line]
            current = (prose, i + 1, [])
            blocks.append(current)
            seen = set()
        if key:
            seen.add(key)
            prose_line = 0
        elif line.strip() and not _TABLE_ROW.match(line) and not _is_setext(lines, i - 1) and not _OTHER_FIELD.match(line):
            prose, prose_line = _block_name(line), i + 1
        if current is not None:
            current[2].append((i + 1, line))

    ablations: list[Ablation] = []
    for name, lineno, body in blocks:
        fields: dict[str, tuple[int, str, list[str]]] = {}
        key = None
        for ln, line in body:
            fm = _FIELD.match(clean_inline(line) if "<" in line else line)
            if fm:
                key = _field_key(fm.group(1))
                if key == "name":
                    name = clean_inline(fm.group(2)) or name
                    key = None
                    continue
                fields[key] = (ln, clean_inline(fm.group(2)), [])
                continue
            if _OTHER_FIELD.match(line):  # "- **Seeds**: 3", "- **Expected outcome**: ...": not a value
                key = None
                continue
            if key is None:
                continue
            im = _ITEM.match(line)
            if im and im.group(1):  # an indented list item continues the current field
                item = clean_inline(im.group(2))
                if item:
                    fields[key][2].append(item)
            elif im and not im.group(1) and key in ("replacement", "metrics") and not _FIELD.match(line):
                item = clean_inline(im.group(2))
                if item:
                    fields[key][2].append(item)
            elif line.strip() and not im and key == "part" and not fields[key][2]:
                ln0, val, items = fields[key]
                fields[key] = (ln0, (val + " " + clean_inline(line)).strip(), items)
        if not fields:
            continue  # a heading without plan fields (e.g. a sub-heading of prose)
        ablations.append(_make_ablation(name, fields, lineno, source))
    ablations += _parse_tables(lines, lo, hi, skip, source)
    ablations = _inherit_metrics(sorted(ablations, key=lambda a: a.line))

    if not ablations:
        raise PlanError(
            f"{source}: no ablation plan found: expected an 'Ablation Plan' section with '### <name>' blocks "
            "holding '- **Ablated Part**:', '- **Action**: REMOVE|REPLACE|ADD', '- **Replacement**:' and "
            "'- **Metrics**:' lines (or a JSONL file with one ablation object per line)"
        )
    return Plan(title=title, ablations=ablations, source=source, format="markdown")


_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?(\s*:?-{2,}:?\s*\|)+\s*(:?-{2,}:?\s*)?\|?\s*$")


def _block_name(line: str) -> str:
    """A prose line as an ablation name: bullets, numbering, heading marks and a trailing colon dropped."""
    t = clean_inline(re.sub(r"^\s*(?:[-*+]\s+|#+\s*|\d+[.)]\s+)", "", line))
    return re.sub(r"^(?:ablation|experiment)\s*\d*\s*[:.)-]\s*(?=\S)", "", t, flags=re.I).strip(" :")


def _cells(line: str) -> list[str]:
    """The cells of a table row; an escaped pipe (``0 \\| 0.5``) separates values inside a cell (read as ``;``)."""
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [clean_inline(c.replace("\\|", " ; ")) for c in re.split(r"(?<!\\)\|", row)]


def _table_key(header: str) -> str | None:
    h = header.lower().strip()
    if re.fullmatch(r"(ablation\s*)?(name|id|#|no\.?|title)|ablation|experiment", h):
        return "name"
    fm = _FIELD.match(f"{header}:")
    return _field_key(fm.group(1)) if fm else None


def _parse_tables(lines: list[str], lo: int, hi: int, skip: tuple[int, int] | None, source: str) -> list[Ablation]:
    """Ablations written as a Markdown table with (at least) 'Ablated Part' and 'Action' columns."""
    out: list[Ablation] = []
    i = lo
    while i < hi:
        if (skip and skip[0] <= i < skip[1]) or not _TABLE_ROW.match(lines[i]) or i + 1 >= hi or not _TABLE_RULE.match(lines[i + 1]):
            i += 1
            continue
        keys = [_table_key(h) for h in _cells(lines[i])]
        i += 2
        if "part" not in keys or "action" not in keys:
            continue
        while i < hi and _TABLE_ROW.match(lines[i]):
            row = dict(zip(keys, _cells(lines[i])))
            row.pop(None, None)
            where = f"{source}:{i + 1}"
            part = row.get("part", "")
            name = row.get("name") or part[:40]
            fields = {k: (i + 1, "" if v.strip() in ("-", "\u2013", "\u2014", "n/a", "N/A") else v, [])
                      for k, v in row.items() if k != "name"}
            if part:
                out.append(_make_ablation(name, fields, i + 1, source))
            elif any(v for v in row.values()):
                raise PlanError(f"{where}: table row has no 'Ablated Part' cell")
            i += 1
    return out


def _make_ablation(name: str, fields: dict, lineno: int, source: str) -> Ablation:
    where = f"{source}:{lineno}"
    if "part" not in fields or not (fields["part"][1] or fields["part"][2]):
        raise PlanError(f"{where}: ablation {name!r} has no '- **Ablated Part**:' line")
    part = fields["part"][1] or " ".join(fields["part"][2])
    if "action" not in fields or not fields["action"][1]:
        raise PlanError(f"{where}: ablation {name!r} has no '- **Action**:' line (REMOVE, REPLACE or ADD)")
    action = normalize_action(fields["action"][1], f"{source}:{fields['action'][0]}", name)
    reps: list[str] = []
    if "replacement" in fields:
        _, inline, items = fields["replacement"]
        reps = items if items else _split_list(inline)
        if items and inline:
            reps = _split_list(inline) + items
    mets: list[str] = []
    if "metrics" in fields:
        _, inline, items = fields["metrics"]
        mets = split_metrics(inline) + [m for it in items for m in split_metrics(it)]
    return _check(Ablation(name or part[:40], part, action, tuple(reps), tuple(mets), lineno), where)


def normalize_action(text: str, where: str, name: str) -> str:
    t = clean_inline(str(text)).upper()
    m = re.match(r"[A-Z]+", t)
    word = m.group(0) if m else ""
    synonyms = {"REMOVAL": "REMOVE", "DELETE": "REMOVE", "DROP": "REMOVE", "DISABLE": "REMOVE",
                "REPLACEMENT": "REPLACE", "VARY": "REPLACE", "CHANGE": "REPLACE", "SWEEP": "REPLACE",
                "ADDITION": "ADD", "ENABLE": "ADD", "INSERT": "ADD"}
    word = synonyms.get(word, word)
    if word not in ACTIONS:
        raise PlanError(f"{where}: ablation {name!r}: unknown action {text!r}; use REMOVE, REPLACE or ADD")
    return word


def _check(ab: Ablation, where: str) -> Ablation:
    if ab.action == "REPLACE" and not ab.replacements:
        raise PlanError(f"{where}: ablation {ab.name!r} is REPLACE but lists no '- **Replacement**:' values")
    return ab


# ------------------------------------------------------------------------------------------ JSONL
_KEYS = {
    "name": ("name", "title", "ablation", "ablation_name"),
    "part": ("ablated_part", "ablated part", "part", "component", "ablated_component"),
    "action": ("action",),
    "replacement": ("replacement", "replacements", "values", "value"),
    "metrics": ("metrics", "metric"),
}


def _get(obj: dict, key: str):
    low = {str(k).lower().strip(): v for k, v in obj.items()}
    for k in _KEYS[key]:
        if k in low:
            return low[k]
    return None


def _from_obj(obj, source: str, lineno: int) -> Ablation:
    where = f"{source}:{lineno}"
    if not isinstance(obj, dict):
        raise PlanError(f"{where}: expected a JSON object with name, ablated_part, action, replacement, metrics; got {type(obj).__name__}")
    part = _get(obj, "part")
    if not part or not str(part).strip():
        raise PlanError(f"{where}: missing 'ablated_part'")
    name = str(_get(obj, "name") or str(part)[:40]).strip()
    action_raw = _get(obj, "action")
    if action_raw is None or not str(action_raw).strip():
        raise PlanError(f"{where}: ablation {name!r}: missing 'action' (REMOVE, REPLACE or ADD)")
    action = normalize_action(str(action_raw), where, name)
    rep = _get(obj, "replacement")
    if rep is None:
        reps: list[str] = []
    elif isinstance(rep, list):
        reps = [clean_inline(json.dumps(r) if isinstance(r, (dict, list)) else str(r)) for r in rep if r is not None]
    else:
        reps = _split_list(clean_inline(str(rep)))
    met = _get(obj, "metrics")
    if met is None:
        mets: list[str] = []
    elif isinstance(met, list):
        mets = [clean_inline(str(m)) for m in met if str(m).strip()]
    else:
        mets = split_metrics(str(met))
    return _check(Ablation(clean_inline(name), clean_inline(str(part)), action, tuple(reps), tuple(mets), lineno), where)


def _parse_jsonl(text: str, source: str) -> Plan:
    stripped = text.strip()
    ablations: list[Ablation] = []
    title = ""
    if stripped.startswith("["):  # a JSON array
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for k, obj in enumerate(data):
            ablations.append(_from_obj(obj, source, k + 1))
    else:
        for lineno, line in enumerate(text.split("\n"), 1):
            s = line.strip()
            if not s or s.startswith("//") or s.startswith("#"):
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as exc:
                raise PlanError(
                    f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one object like {\"name\": ..., \"ablated_part\": ..., \"action\": ...}"
                ) from None
            if isinstance(obj, dict) and _get(obj, "part") is None and ("title" in obj or "paper" in obj):
                title = str(obj.get("title") or obj.get("paper"))  # an optional header line
                continue
            ablations.append(_from_obj(obj, source, lineno))
    if not ablations:
        raise PlanError(f"{source}: no ablation plan found: the JSONL file holds no ablation objects")
    return Plan(title=title or Path(source).stem.replace("_", " "), ablations=_inherit_metrics(ablations),
                source=source, format="jsonl")


# ------------------------------------------------------------------------------------------ public
def _looks_jsonl(text: str, source: str) -> bool:
    if source.lower().endswith((".jsonl", ".json", ".ndjson")):
        return True
    s = text.lstrip()
    return s.startswith("{") or (s.startswith("[") and s[1:].lstrip().startswith("{"))


def parse_plan_text(text: str, source: str = "<text>") -> Plan:
    if not text.strip():
        raise PlanError(f"{source}: the plan file is empty")
    plan = _parse_jsonl(text, source) if _looks_jsonl(text, source) else _parse_markdown(text, source)
    plan.text = text
    return plan


def parse_plan(path: str | Path) -> Plan:
    """Read a plan file (markdown as rendered by AblationBench, or JSONL) into a :class:`Plan`."""
    p = Path(path)
    return parse_plan_text(_read(p), str(p))
