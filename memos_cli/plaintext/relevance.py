"""Relevance: how strongly a recalled unit is evidence for the query, from 0 to 1.

Recall's fused score ranks the candidates of one query: its parts are scaled
over the candidates of that query (see ``retrieval``), so the best candidate
of any query gets near 1, whether or not anything in the store is about it.
``relevance`` answers the other question, "is this a match at all?", and is
meant to be compared across queries and stores. It is read from two
measures that do not depend on the other candidates:

- ``cosine``: the cosine similarity of the query's embedding and the unit's
  (the unit alone, without its context turns);
- ``coverage``: the share of the query's words that the result's text holds
  (the passage: the unit with its context turns). Words are compared as the
  full-text index sees them: accents folded, CJK in character pairs, lower
  case, English stop words dropped, Snowball (Porter 2) stems. A query of
  stop words only has nothing to cover and gets coverage 0.

and combined by a logistic model,

    relevance = 1 / (1 + exp(-(A * cosine + B * coverage + C)))

whose three weights were fitted (maximum likelihood) on the LoCoMo
development split: every question asked of its own conversation's store
(answerable) and as many questions of another conversation (not), one half
each, with the top result's two measures. So relevance 0.5 is where an
answerable and an unanswerable question are equally likely, 0.9 the odds of
9 to 1 for "this is evidence". There the top result's relevance told the two
apart with AUROC 0.98 (the fused score: 0.74), and of the results rated
0.9 or more, 98% were answerable; of those under 0.1, 2%. (Once recall
also ranked by it, AUROC 0.99: ``retrieval``.)

Two other measures were tried and left out: the coverage of the query's
words by the whole store (a question about a name the store never saw) gave
AUROC 0.94 alone and added nothing to the cosine; IDF-weighted coverage
needed each query word's document frequency, which Lance does not expose
cheaply. The largest cosine among the top 10 (0.99) beat the top result's
(0.95) before recall ranked by relevance. The cosine scale is the
embedding model's: the weights are those of all-MiniLM-L6-v2, and a store
with another model gets them too, with a note in ``explain``.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from memos_cli.plaintext.terms import index_terms, query_terms

# Fitted as the module's docstring says (all-MiniLM-L6-v2, LoCoMo development split).
A_COSINE = 13.22
B_COVERAGE = 10.72
C_BIAS = -10.41
CALIBRATED_FOR = "all-MiniLM-L6-v2"

# English function words: they say nothing about what a query is about. Lance's own
# stop list is shorter (it keeps "what", "did", "does"), which suits ranking but not a share.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing done down during each either else ever every few for
from further get got had has have having he her here hers herself him himself his how i if in into
is it its itself just let me might more most much must my myself neither no nor not now of off on
once only or other ought our ours ourselves out over own per please same shall she should since so
some such than that the their theirs them themselves then there these they this those though through
thus to too under until up upon us very was we were what whatever when whenever where whereas
wherever whether which while who whoever whom whose why will with within without would yet you your
yours yourself yourselves s t d ll m re ve
""".split())

_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS}


def query_words(query: str) -> set[str]:
    """The words of a query that coverage counts."""
    return _words(query_terms(query))


def text_words(text: str) -> set[str]:
    """The words of a result's text, as ``query_words`` sees a query's."""
    return _words(index_terms(text))


def covered(query: set[str], text: str) -> tuple[set[str], float]:
    """The query's words that ``text`` holds, and their share of the query (``coverage``)."""
    found = query & text_words(text)
    return found, len(found) / len(query) if query else 0.0


def relevance(cosine: float, coverage: float) -> float:
    """The calibrated relevance of a result with these two measures (see the module's docstring)."""
    z = A_COSINE * cosine + B_COVERAGE * coverage + C_BIAS
    return 1.0 / (1.0 + math.exp(-z))


def assess(query: set[str], text: str, cosine: float, model: str | None = None) -> dict[str, Any]:
    """Relevance of one result, with how it was reached (``explain``'s ``relevance``).

    ``query`` is ``query_words(the query)``; ``text`` the result's passage.
    """
    found, coverage = covered(query, text)
    out: dict[str, Any] = {
        "relevance": round(relevance(cosine, coverage), 4),
        "cosine": round(cosine, 4),
        "coverage": round(coverage, 4),
        "words_found": sorted(found),
        "words_missing": sorted(query - found),
        "model": f"1 / (1 + exp(-({A_COSINE} * cosine + {B_COVERAGE} * coverage + ({C_BIAS}))))",
    }
    if model is not None and model != CALIBRATED_FOR:
        out["note"] = f"calibrated for {CALIBRATED_FOR}; this store embeds with another model"
    return out
