"""What the full-text index sees of a text: accents folded, CJK cut into n-grams, symbols named.

Lance's full-text tokenizer (``simple``: split at whitespace and punctuation,
lower-case, English stemming and stop words, ASCII folding) suits English and
other spaced Latin-script text, and misses three things, which this module
fixes by rewriting the text before the index (and the query before the
search) sees it:

- Accents: Lance stems before it folds, so ``résumé`` is indexed as
  ``resume`` unstemmed while the query ``resume`` is stemmed to ``resum``,
  and the two never meet. Folding here, first, makes both ``resum``.
- Chinese, Japanese and Korean are written without spaces (Korean without
  spaces between a word and its particles): a whole clause is one token, so
  ``护照`` never matches ``我的护照在抽屉里``. Each run of such characters
  becomes its characters and their overlapping pairs (``我 的 护 照 ... 我的
  的护 护照 ...``), as Lucene's CJK analyzer does; a query becomes its pairs
  (a one-character run its character), so a query word of two or more
  characters must appear as written, and the more of its pairs a text
  shares, the higher it ranks. No dictionary or model is needed (ICU's word
  segmentation was the alternative: it keeps Korean particles on their
  words, and can cut the same word differently in a query and a text).
- Symbols and emoji are punctuation to the tokenizer: each becomes a word
  ``u`` + its code point in hex (``🐶`` -> ``u1f436``).

Text that is plain ASCII, nearly all English, passes through unchanged, so
the English ranking is the one the ``simple`` tokenizer gave before.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Scripts written without spaces between words, cut into n-grams: Hangul Jamo,
# CJK punctuation-free blocks (kana, Bopomofo, Hangul compatibility Jamo and
# the like), CJK ideographs (with extension A), Hangul syllables, CJK
# compatibility ideographs, and the supplementary ideograph planes.
_NGRAM_RANGES = (
    (0x1100, 0x11FF),
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3041, 0x30FF),  # hiragana, katakana (with ー)
    (0x3105, 0x318F),  # Bopomofo, Hangul compatibility Jamo
    (0x31A0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3FFFF),
)
# Letters that NFKD does not decompose into an ASCII letter and a mark.
_FOLD = {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L",
         "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i", "ŉ": "n"}

# What joins or modifies an emoji: zero-width joiner, variation selectors, skin tones.
_EMOJI_PARTS = frozenset(["\u200d", *map(chr, range(0xFE00, 0xFE10)), *map(chr, range(0x1F3FB, 0x1F400))])


def _ngram_char(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _NGRAM_RANGES)


@lru_cache(maxsize=4096)
def _char(c: str) -> str:
    """One character as the index sees it: folded, a symbol named, else as it is."""
    if c in _FOLD:
        return _FOLD[c]
    if unicodedata.category(c) == "So":  # emoji and other symbols
        return f" u{ord(c):x} "
    if c in _EMOJI_PARTS:
        return ""
    decomposed = unicodedata.normalize("NFKD", c)
    base = "".join(x for x in decomposed if not unicodedata.combining(x))
    return base if base and base.isascii() else c


def _rewrite(text: str, query: bool) -> str:
    if text.isascii():
        return text
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if not run:
            return
        pairs = [a + b for a, b in zip(run, run[1:], strict=False)]
        # A text: its characters and its pairs. A query: its pairs (a single character: itself).
        words = (pairs or run) if query else run + pairs
        out.append(" " + " ".join(words) + " ")
        run.clear()

    for c in unicodedata.normalize("NFKC", text):
        if _ngram_char(c):
            run.append(c)
            continue
        flush()
        out.append(c if c.isascii() else _char(c))
    flush()
    return "".join(out)


def index_terms(text: str) -> str:
    """The text as the full-text index holds it (the ``terms`` column)."""
    return _rewrite(text, query=False)


def query_terms(query: str) -> str:
    """A recall query as the full-text search is given it, rewritten as the texts were."""
    return _rewrite(query, query=True)
