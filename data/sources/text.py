"""Turning raw package text into clean prose documents: roff markup stripped, wrapped lines
joined, paragraphs of the wrong language dropped, paragraphs grouped into documents.

The language filter matters: Debian's translated manuals keep untranslated English paragraphs
(about a sixth of the French Debian Reference), which would blur a "French" category.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DOCUMENT_CHARS = 2000  # paragraphs are grouped into documents of about this many characters
MIN_PARAGRAPH_CHARS = 40

# Frequent function words, one disjoint set per language (words shared by two languages, such
# as "la" or "des", are left out so a hit always points to one language).
STOPWORDS = {
    "en": set(
        "the and of to is that it for with are this be not or by from on as can which an if "
        "you was have will your there their when".split()
    ),
    "fr": set(
        "les et est une du de en que pour dans pas sur qui avec sont au aux ce cette ou par peut "
        "vous il elle nous leur être fichier fichiers".split()
    ),
    "de": set(
        "der die das und ist nicht ein eine zu den mit sich auf für von werden wird auch oder "
        "im dem sie es kann wenn bei nach".split()
    ),
    "it": set(
        "il di e che per non sono del della con gli si è da nel alla dei delle questo può "
        "come anche ma più essere viene".split()
    ),
}
WORD = re.compile(r"[^\W\d_]+")
_TABLE_LINE = re.compile(r"^\s*(\||\+-)", re.M)


def language_of(paragraph: str) -> str | None:
    """The language whose function words dominate `paragraph`, or None when none clearly does
    (tables, commands, code, lists of names)."""
    words = WORD.findall(paragraph.lower())
    hits = {lang: sum(w in vocab for w in words) for lang, vocab in STOPWORDS.items()}
    best = max(hits, key=hits.__getitem__)
    runner_up = max(v for lang, v in hits.items() if lang != best)
    if hits[best] >= 3 and hits[best] >= 0.08 * len(words) and hits[best] > 2 * runner_up:
        return best
    return None


def reflow(paragraph: str) -> str:
    """One line per paragraph: hard-wrapped lines joined, runs of spaces collapsed."""
    return " ".join(paragraph.split())


def paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs, reflowed; short ones and text tables (box-drawn with
    `|` and `+--`, whose cells reflow into word salad) dropped."""
    raw = (p for p in re.split(r"\n\s*\n", text) if not _TABLE_LINE.search(p))
    return [p for p in map(reflow, raw) if len(p) >= MIN_PARAGRAPH_CHARS]


def group(pieces: Iterable[str], max_chars: int = DOCUMENT_CHARS, sep: str = "\n\n") -> list[str]:
    """Consecutive pieces joined by `sep` into documents of at most about `max_chars` characters
    (a piece longer than that is a document of its own): documents long enough to carry
    context, and many of them, so a big text can be dealt out to many clients."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for p in pieces:
        if current and size + len(p) > max_chars:
            docs.append(sep.join(current))
            current, size = [], 0
        current.append(p)
        size += len(p)
    if current:
        docs.append(sep.join(current))
    return docs


# Where a text too long for one document is cut, most natural first, and what joins its pieces again.
_CUTS = ((re.compile(r"\n"), "\n"), (re.compile(r"(?<=[.!?])\s+"), " "), (re.compile(r"\s+"), " "))


def cut(text: str, max_chars: int = DOCUMENT_CHARS, level: int = 0) -> list[str]:
    """`text` as consecutive pieces of at most about `max_chars` characters, cut at line ends where
    that suffices, else at sentence ends, else at spaces, else anywhere; a text that short already
    is one piece. A corpus held as one long line still gives documents the budgets can use."""
    if len(text) <= max_chars:
        return [text]
    if level == len(_CUTS):
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    pattern, sep = _CUTS[level]
    return group([p for part in pattern.split(text) if part for p in cut(part, max_chars, level + 1)], max_chars, sep)


def documents(paras: Iterable[str], language: str, seen: set[str], max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Consecutive paragraphs in `language`, grouped into documents of about `max_chars`.

    A paragraph already in `seen` is dropped (and new ones are added to it): boilerplate such as
    the translators' note closing every translated man page would otherwise repeat across
    documents, and so across clients and splits.
    """
    kept = []
    for p in paras:
        if p in seen or language_of(p) != language:
            continue
        seen.add(p)
        kept.append(p)
    return group(kept, max_chars)


# --- roff (man pages) -------------------------------------------------------------------------

# Requests that start a new paragraph.
_BREAKS = {
    "SH",
    "SS",
    "PP",
    "LP",
    "P",
    "IP",
    "TP",
    "HP",
    "sp",
    "br",
    "RS",
    "RE",
    "nf",
    "fi",
    "EX",
    "EE",
    "Sh",
    "Ss",
    "Pp",
    "Bl",
    "El",
    "It",
    "Bd",
    "Ed",
    "TH",
    "Dd",
    "Dt",
    "Os",
}
# Upper-case macros carry text in their arguments, except these (titles, dates, URLs, indents).
_DROP_ARGS = {"TH", "Dd", "Dt", "Os", "UR", "MT", "IP", "RS", "RE", "Bl", "Bd"}
# Font macros whose arguments alternate between two fonts and are written without spaces.
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_NAMED_GLYPHS = {
    "em": "—",
    "en": "–",
    "hy": "-",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "Fo": "«",
    "Fc": "»",
    "bu": "•",
    "co": "©",
    "rg": "®",
    "tm": "™",
    "de": "°",
    "mu": "×",
    "rs": "\\",
    "ti": "~",
    "ha": "^",
    "la": "⟨",
    "ra": "⟩",
    "<=": "≤",
    ">=": "≥",
    "ga": "`",
    "aa": "´",
    "pd": "∂",
    "if": "∞",
    "is": "∫",
    "Eu": "€",
    "eu": "€",
}
_ESCAPE = re.compile(
    r"\\(?:\((..)|\[([^\]]*)\]|\*(?:\((..)|\[([^\]]*)\]|(.))|f(?:\(..|\[[^\]]*\]|.)"
    r"|s[-+]?\d|([-e&\s~,/|^%c0:'`\"]))"
)
_SIMPLE = {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " ", "'": "´", "`": "`"}


def _glyph(match: re.Match) -> str:
    named = next((g for g in match.groups()[:4] if g is not None), None)
    if named is not None:
        return _NAMED_GLYPHS.get(named, "")
    simple = match.group(6)
    return _SIMPLE.get(simple, "") if simple is not None else ""


def _roff_args(line: str) -> list[str]:
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|\S+', line)]


def roff_to_text(source: str) -> str:
    """Plain text of a man page (man or mdoc macros): markup and comments dropped, tables and
    macro definitions skipped, one blank line between paragraphs."""
    out: list[str] = []
    skipping = None  # the request that ends the block being skipped (a table, a macro definition)
    for line in source.splitlines():
        line = re.sub(r'\\".*', "", line)  # comment to end of line
        if skipping:
            if line.startswith(skipping):
                skipping = None
            continue
        if line.startswith((".TS", ".de ", ".ig")):
            skipping = ".TE" if line.startswith(".TS") else ".."
            continue
        if line.startswith((".", "'")):
            name, _, rest = line[1:].strip().partition(" ")
            if name in _BREAKS:
                out.append("")
            if name in _ALTERNATING:
                out.append("".join(_roff_args(rest)))
            elif name[:1].isupper() and name not in _DROP_ARGS:
                out.append(" ".join(_roff_args(rest)))
            continue  # lower-case requests (.if, .ad, .nh, ...) carry no text
        out.append(line)
    text = _ESCAPE.sub(_glyph, "\n".join(out))
    return text.replace("\\\\", "\\")
