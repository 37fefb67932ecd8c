"""Text normalisation and fuzzy phrase scoring shared by the resolver (knobs, choices, metrics).

Plans arrive with mojibake (Greek letters turned into CJK or Latin-1 garbage), markdown and HTML noise,
and in many people's words. Every phrase goes through :func:`tokens`: lowercase ASCII only (anything
non-ASCII becomes a separator, so damaged glyphs vanish), a few multi-word canonicalisations
("trade-off", "slow-moving", "L~pred", "m_c", "2-layer"), stop-word removal, a synonym table
("coefficient"/"balance"/"lambda" -> weight, "pipeline"/"caching" -> cache, "tau" -> temperature...) and a
light stemmer. :class:`PhraseIndex` scores a query against named phrase sets with IDF-weighted
coverage, so specific multi-word matches beat generic one-word ones.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

__all__ = ["tokens", "weighted_tokens", "ascii_text", "readable_text", "PhraseIndex", "token_sim", "TAIL_WEIGHT"]

TAIL_WEIGHT = 0.7  # tokens after the head of a noun phrase ("X between/for/used to ... Y") count this much
CONTIGUOUS_BONUS = 1.2  # a multi-word phrase said verbatim ("weight decay") beats the same words scattered

_CANON: list[tuple[re.Pattern, str]] = [
    (re.compile(p, re.I), r)
    for p, r in [
        (r"l\s*[~\u0303\u02dc]\s*_?\s*\{?\s*pred", " lpred reverse "),
        (r"\bl\s*_\s*\{?\s*(pred|intra|ce|ctr|cls|kd|inter|teacher)\b\}?", r" l\1 "),
        (r"\bm\s*_\s*\{?\s*c\s*\}?(?![a-z])", " mc "),
        (r"\bm\s*_\s*\{?\s*r\s*\}?(?![a-z])", " mr "),
        (r"top\s*-?\s*1\b", " top1 "),
        (r"top\s*-?\s*5\b", " top5 "),
        (r"trade\s*-?\s*offs?", " tradeoff "),
        (r"slow\s*-?\s*moving", " slowmoving "),
        (r"(exponential\s+)?moving\s+average", " momentum "),
        (r"self\s*-?\s*supervised", " selfsupervised "),
        (r"intra\s*-?\s*class", " intraclass "),
        (r"inter\s*-?\s*class", " interclass "),
        (r"cross\s*-?\s*entropy", " crossentropy "),
        (r"mini\s*-?\s*batch", " batch "),
        (r"warm\s*-?\s*up", " warmup "),
        (r"batch\s*-?\s*norm(alization|alisation)?", " batchnorm "),
        (r"\bbn\b", " batchnorm "),
        (r"info\s*-?\s*nce", " infonce "),
        (r"nt\s*-?\s*xent", " ntxent "),
        (r"sup\s*-?\s*con", " supcon "),
        (r"sim\s*-?\s*clr", " simclr "),
        (r"co\s*-?\s*co\s*-?\s*rd", " cocord "),
        (r"fit\s*-?\s*nets?", " fitnet "),
        (r"\b(single|one|1)\s*-?\s*layers?\b", " 1layer "),
        (r"\b(two|2)\s*-?\s*layers?\b", " 2layer "),
        (r"\b(three|3)\s*-?\s*layers?\b", " 3layer "),
        (r"\bfirst\s*-?\s*in\s*-?\s*first\s*-?\s*out\b", " fifo "),
        (r"\bper\s*-?\s*class\b", " perclass "),
        (r"\bclass\s*-?\s*wise\b", " perclass "),
        (r"\bparam(eter)?s?\s*-?\s*efficien(cy|t)\b", " paramefficiency "),  # before "parameter" is a stop word
        (r"\bhyper\s*-?\s*param(eter)?s?\b", " "),
        (r"\bl2\b", " ltwo "),
    ]
]

_STOP = frozenset(
    """a an the of for in on to with by and or from that which used use uses using is are be been this its their as at
    it into between during when where how each all via through per than then also our we i e g eg ie etc
    ablation ablate ablated ablating ablations study studies effect effects impact role vary varying varied different
    value values component components mechanism mechanisms module modules based proposed remove removal removing removed
    without replace replacing replaced add adding added entire entirely whole only just completely fully
    parameter parameters setting settings choice choices type types kind strategy approach technique scheme design part
    method methods effectively specific specifically applying apply applied so such other another versus vs instead""".split()
)

_SYN: dict[str, str] = {}
for canon, words in {
    "weight": "weight weights weighting weighted coefficient coefficients coeff coef factor factors balance balancing "
    "tradeoff strength importance multiplier lambda scale scaling",
    "threshold": "threshold thresholds thresh cutoff delta",
    "temperature": "temperature temperatures temp tau t",
    "cache": "cache caches caching cached pipeline pipelines pipelined buffer buffers",
    "size": "size sizes length lengths capacity number numbers count amount num len",
    "momentum": "momentum momenta ema",
    "projection": "projection projections projector projectors project projected",
    "contrastive": "contrastive contrast contrasting infonce",
    "loss": "loss losses objective objectives term terms criterion",
    "filter": "filter filters filtering filtered selection select selecting selected selector gating gate gated screening",
    "symmetric": "symmetric symmetrization symmetrisation symmetrized symmetrised symmetry symmetrize symmetrise symmetrical",
    "negative": "negative negatives neg negs",
    "augment": "augmentation augmentations augment augmentations augmenting transform transforms transformation transformations",
    "dimension": "dimension dimensions dim dims dimensionality",
    "architecture": "architecture architectures arch backbone backbones network networks model models",
    "dictionary": "dictionary dictionaries dict",
    "sample": "sample samples example examples instance instances",
    "crossentropy": "crossentropy ce",
    "prediction": "prediction predictions predictor predictive",
    "consistency": "consistency consistent",
    "distillation": "distillation distilling distill kd",
    "epoch": "epoch epochs",
    "anchor": "anchor anchors",
    "confidence": "confidence confident certainty",
    "teacher": "teacher teachers",
    "student": "student students",
    "lpred": "lpred",
    "intraclass": "intraclass lintra",
    "lctr": "lctr",
    "lcls": "lcls lce",
}.items():
    for w in words.split():
        _SYN[w] = canon

_SUFFIXES = ("izations", "ization", "isation", "ations", "ation", "ments", "ment", "ness", "ities", "ity", "ings", "ing",
             "ized", "ised", "izes", "ises", "ize", "ise", "ies", "es", "ed", "s", "ly", "al", "er", "e")


def _stem1(w: str) -> str:
    if len(w) <= 3 or not w.isalpha():
        return w
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            if suf == "s" and w.endswith(("ss", "us", "is")):
                return w
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


@lru_cache(maxsize=20000)
def stem(w: str) -> str:
    return _stem1(_stem1(w))


_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "λ": "lambda", "μ": "mu",
          "ρ": "rho", "σ": "sigma", "τ": "tau", "θ": "theta", "η": "eta"}


def ascii_text(text: str) -> str:
    """Lowercase, NFKC, UTF-8 read as cp1252 repaired where that is unambiguous ("Î´" -> δ), intact Greek
    letters spelled out (δ -> delta), every other non-ASCII character turned into a space (damaged glyphs
    vanish)."""
    return "".join(_ascii(c, " {} ") for c in _nfkc(repair_mojibake(text)).lower())


def repair_mojibake(text: str) -> str:
    """UTF-8 that was read as cp1252 ("Î´", "Ï„") turned back into what it was (δ, τ), run by run, where the
    run decodes; anything else unchanged. Before NFKC and lowercasing, which change the damaged characters
    (NFKC turns the acute accent of "Î´" into a space and a combining mark)."""
    return _MOJIBAKE_RUN.sub(lambda m: _repaired(m.group()), text)


_MOJIBAKE_RUN = re.compile(r"[^\x00-\x7f]+")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")


def readable_text(text: str) -> str:
    """Plan text for a person to read (report titles, names, ablated parts): its case kept, UTF-8 that was read
    as cp1252 repaired where that is unambiguous ("Ï„" -> τ), intact Greek letters spelled out, dashes made
    ASCII, every other non-ASCII character (damaged glyphs) dropped, with the brackets it leaves empty and
    the doubled spaces."""
    text = _nfkc(repair_mojibake(text)).replace("\u2013", "-").replace("\u2014", "-")
    text = _EMPTY_BRACKETS.sub("", "".join(_ascii(c, "{}") for c in text))
    return re.sub(r"\s{2,}", " ", text).strip()


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u00d7", "x")


def _ascii(c: str, greek: str) -> str:
    """``c`` if ASCII; a Greek letter spelled out into ``greek`` (a format: " {} " keeps it a separate token)."""
    if ord(c) < 128:
        return c
    return greek.format(_GREEK[c.lower()]) if c.lower() in _GREEK else " "


def _repaired(run: str) -> str:
    try:
        return run.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return run


@lru_cache(maxsize=20000)
def tokens(text: str) -> tuple[str, ...]:
    """Normalised tokens of a phrase (see module doc)."""
    t = unicodedata.normalize("NFKC", repair_mojibake(text)).lower()
    for pat, rep in _CANON[:1]:  # L~pred before the tilde is lost
        t = pat.sub(rep, t)
    t = ascii_text(t)
    for pat, rep in _CANON[1:]:
        t = pat.sub(rep, t)
    out = []
    for w in re.split(r"[^a-z0-9]+", t):
        if not w or w in _STOP:
            continue
        if w in _SYN:
            out.append(_SYN[w])
            continue
        s = stem(w)
        out.append(_SYN.get(s, s))
    return tuple(out)


_BOUNDARY = re.compile(
    r"\b(between|that|which|used|using|to|when|where|while|for|in|with|from|by|on|during|via|across|within|under|so)\b",
    re.I,
)


def weighted_tokens(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Tokens of a free-text part, with the head of the phrase (up to the first "for/in/between/used..."
    outside parentheses) at weight 1 and the rest at TAIL_WEIGHT; parenthesised symbols ("(δ)", "(L_pred)")
    count fully, parenthesised explanations of three words or more ("(trained on hard labels only)") count
    TAIL_WEIGHT wherever they are."""
    explained = [m for m in re.finditer(r"\(([^()]*)\)", text) if len(tokens(m.group(1))) > 2]
    if explained:
        rest = text
        for m in reversed(explained):
            rest = rest[: m.start()] + " " + rest[m.end():]
        toks, weights = weighted_tokens(rest)
        extra = tuple(t for m in explained for t in tokens(m.group(1)))
        return toks + extra, weights + tuple(TAIL_WEIGHT for _ in extra)
    depth, cut = 0, None
    for m in re.finditer(r"[()]|" + _BOUNDARY.pattern, text, re.I):
        g = m.group(0)
        if g == "(":
            depth += 1
        elif g == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            if tokens(text[: m.start()]):
                cut = m.start()
                break
    if cut is None:
        t = tokens(text)
        return t, tuple(1.0 for _ in t)
    head, tail = tokens(text[:cut]), text[cut:]
    parens = " ".join(re.findall(r"\(([^)]*)\)", tail))
    rest = re.sub(r"\([^)]*\)", " ", tail)
    toks = list(head) + list(tokens(parens)) + list(tokens(rest))
    weights = [1.0] * (len(head) + len(tokens(parens))) + [TAIL_WEIGHT] * len(tokens(rest))
    return tuple(toks), tuple(weights)


@lru_cache(maxsize=200000)
def token_sim(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)):
        return 0.75
    if min(len(a), len(b)) >= 5 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.85:
        return 0.6
    return 0.0


def _best(tok: str, pool: Sequence[str], weights: Sequence[float] | None = None) -> float:
    best = 0.0
    for i, p in enumerate(pool):
        s = token_sim(tok, p) * (weights[i] if weights is not None else 1.0)
        if s > best:
            best = s
    return best


def _contiguous(phrase: tuple[str, ...], query: Sequence[str]) -> bool:
    """The phrase's tokens occur in the query in this order with nothing between them."""
    n = len(phrase)
    return any(tuple(query[i:i + n]) == phrase for i in range(len(query) - n + 1))


def _dedupe(toks: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(toks))


class PhraseIndex:
    """Score a query against named groups of phrases (knob -> aliases, choice -> phrases, metric -> names).

    The score of one phrase is ``m * c**2``: ``m`` the IDF weight of its tokens found in the query,
    ``c`` the fraction of its weight found. A group's score is its best phrase, times
    ``0.6 + 0.4 * q`` where ``q`` is the fraction of the query's weight the group's vocabulary explains.
    """

    def __init__(self, groups: Mapping[str, Iterable[str]], *, weak: Mapping[str, Iterable[str]] | None = None):
        self.phrases: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        self.vocab: dict[str, set[str]] = {}
        self.originals: dict[tuple[str, tuple[str, ...]], str] = {}
        for name, phrases in groups.items():
            for p in list(phrases) + list((weak or {}).get(name, ())):
                self.originals.setdefault((name, _dedupe(tokens(p))), p)
            lst = [(_dedupe(tokens(p)), 1.0) for p in phrases]
            if weak and name in weak:
                lst += [(_dedupe(tokens(p)), 0.5) for p in weak[name]]
            lst = [(t, f) for t, f in lst if t]
            self.phrases[name] = lst
            self.vocab[name] = {tok for t, _ in lst for tok in t}
        n = max(len(self.phrases), 1)
        df: dict[str, int] = {}
        for name, lst in self.phrases.items():
            for tok in {tok for t, f in lst if f == 1.0 for tok in t}:
                df[tok] = df.get(tok, 0) + 1
        self._n = n
        self._df = df

    def weight(self, tok: str) -> float:
        return math.log(1.0 + self._n / (1.0 + self._df.get(tok, 0)))

    def phrase_score(self, phrase: tuple[str, ...], query: Sequence[str], qw: Sequence[float] | None = None) -> float:
        total = sum(self.weight(t) for t in phrase)
        if total <= 0:
            return 0.0
        m = sum(self.weight(t) * _best(t, query, qw) for t in phrase)
        c = m / total
        return m * c * c

    def query_coverage(self, name: str, query: Sequence[str], qw: Sequence[float] | None = None) -> float:
        qw = qw if qw is not None else [1.0] * len(query)
        total = sum(self.weight(t) * w for t, w in zip(query, qw))
        if total <= 0:
            return 0.0
        vocab = list(self.vocab[name])
        return sum(self.weight(t) * w * _best(t, vocab) for t, w in zip(query, qw)) / total

    def score(self, name: str, query: Sequence[str], qw: Sequence[float] | None = None) -> tuple[float, str]:
        best, best_phrase = 0.0, ""
        for phrase, factor in self.phrases[name]:
            s = factor * self.phrase_score(phrase, query, qw)
            if len(phrase) > 1 and _contiguous(phrase, query):
                s *= CONTIGUOUS_BONUS
            if s > best:
                best, best_phrase = s, self.originals.get((name, phrase), " ".join(phrase))
        if best <= 0:
            return 0.0, ""
        return best * (0.6 + 0.4 * self.query_coverage(name, query, qw)), best_phrase

    def rank(self, text: str, names: Iterable[str] | None = None) -> list[tuple[str, float]]:
        q = tokens(text)
        out = [(n, self.score(n, q)[0]) for n in (names if names is not None else self.phrases)]
        return sorted(out, key=lambda x: -x[1])

