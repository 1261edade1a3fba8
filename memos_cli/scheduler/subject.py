"""The subject of a statement: what a fact is about, so that a newer fact about the same subject can
close an older one (``supersede``). "My address is 12 Oak Street" is about "my address"; a label
("Address: ...", "password = ...") or a statement of who has or does what ("I live in Lisbon") names
one; anything else has none. Pure and deterministic: words and patterns, no model.
"""

from __future__ import annotations

import re
import unicodedata

from memos_cli.scheduler.dedupe import normalise

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LABEL = re.compile(r"\s*(?::(?=\s|$)|=)\s*")  # "Address: x", "password = x"; not "10:00" or "https://"
_SPELLING = {"favorite": "favourite", "favorites": "favourites", "color": "colour", "colors": "colours"}

_STOP = frozenset("""
    i me my mine myself we us our ours you your yours he him his she her hers it its they them their theirs
    this that these those there here the a an what which who whom whose where when why how s t one
    something everything nothing anything someone everyone all some any if and or but so then also just
    now not no do does did can could would should will shall may might must to of in on at for with by
    from as about be been being is are am was were has have had
""".split())
_WHO_PRONOUNS = frozenset({"i", "we"})  # the user: the only pronouns that name a who
_DETERMINERS = frozenset({"my", "our", "the"})  # a definite description; "his", "her", "their": whose?
_POSSESSIVE_WHO = frozenset({"my", "our"})
_COPULAS = frozenset({"is", "are", "am"})
_PAST_COPULAS = frozenset({"was", "were"})
_PREPOSITIONS = frozenset({"at", "in", "on", "from", "to", "with", "near", "under", "for", "by", "before", "after",
                           "until", "during", "inside", "outside"})
_NEGATIONS = frozenset({"not", "no", "never", "t"})  # "t": the tail of "doesn't", "isn't"
_BEFORE_VERB = frozenset({"has", "have", "ve", "had", "am", "m", "is", "s", "are", "re", "do", "does", "doesn",
                          "don", "isn", "aren", "now", "currently", "still", "recently", "just", "actually",
                          "finally", "already", "longer"}) | _NEGATIONS
_FILLER = frozenset({"now", "still", "currently", "actually", "nowadays", "anymore", "presently"})
_GENERIC_LABELS = frozenset({"note", "notes", "update", "updated", "fyi", "reminder", "todo", "correction",
                             "important", "ps", "btw", "edit", "info", "remember", "fact", "preference", "memo",
                             "new", "news"})
# Heads of subjects that name a person or pet, not an attribute: they have many true properties at once.
_ENTITY_HEADS = frozenset("""
    sister sisters brother brothers mother mom mum father dad parents parent wife husband partner spouse son sons
    daughter daughters child children kid kids baby friend friends boss manager colleague colleagues coworker
    boyfriend girlfriend fiance fiancee neighbour neighbor neighbours neighbors roommate flatmate teacher doctor
    dog dogs cat cats pet pets grandmother grandfather grandma grandpa aunt uncle cousin nephew niece family team
    """.split())
# One-valued state verbs: (verb forms, prepositions that must follow or None, canonical name).
_VERBS: tuple[tuple[frozenset[str], frozenset[str] | None, str], ...] = (
    (frozenset({"live", "lives", "living"}), frozenset({"in", "at"}), "lives"),
    (frozenset({"moved", "move", "moves", "moving", "relocated"}), frozenset({"to"}), "lives"),
    (frozenset({"work", "works", "working"}), frozenset({"at", "for"}), "works"),
    (frozenset({"prefer", "prefers"}), None, "prefers"),
)


# ---- the subject of a statement ----------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return [_SPELLING.get(w, w) for w in normalise(text).split()]


def _value(tokens: list[str]) -> str:
    """The value words of a statement, without leading and trailing filler ("now", "still")."""
    start, end = 0, len(tokens)
    while start < end and tokens[start] in _FILLER:
        start += 1
    while end > start and tokens[end - 1] in _FILLER:
        end -= 1
    return " ".join(tokens[start:end])


def _meaningful(words: list[str]) -> bool:
    return any(w not in _STOP for w in words)


def _label(text: str, match: re.Match[str]) -> tuple[str, str] | None:
    """'Home address: 4 Elm Road' -> ('home address', '4 elm road')."""
    label = _tokens(text[:match.start()])
    if not 1 <= len(label) <= 5 or not _meaningful(label) or label[-1] in _ENTITY_HEADS | {"s"}:
        return None
    if any(w in _STOP - _DETERMINERS - {"s", "of", "for", "to", "in", "at", "on"} for w in label):
        return None  # a pronoun, a verb or a question word: a sentence, not a label
    value = _value(_tokens(text[match.end():]))
    return (" ".join(label), value) if value else None


def _who(words: list[str]) -> bool:
    """Whether words name someone: "i", "we", "alice", "alice smith", "my sister", "alice s sister"."""
    if len(words) == 1 and words[0] in _WHO_PRONOUNS:
        return True
    rest = words[1:] if words[0] in _POSSESSIVE_WHO else words
    if not rest or len(rest) > 3:
        return False
    if len(rest) >= 3 and rest[1] == "s":  # "alice s sister"
        rest = rest[:1] + rest[2:]
    return all(w not in _STOP and not w.isdigit() for w in rest)


def _verb(tokens: list[str]) -> tuple[str, str] | None:
    """'Alice moved to Porto' -> ('alice|lives', 'porto')."""
    for k in range(1, min(4, len(tokens))):
        if not _who(tokens[:k]):
            continue
        j, negated = k, False
        while j < len(tokens) and tokens[j] in _BEFORE_VERB:
            negated = negated or tokens[j] in _NEGATIONS
            j += 1
        if j >= len(tokens):
            return None
        for forms, preps, name in _VERBS:
            if tokens[j] not in forms:
                continue
            after = j + 1
            if preps is not None:
                if after >= len(tokens) or tokens[after] not in preps:
                    return None
                after += 1
            value = _value(tokens[after:])
            if not value:
                return None
            return f"{' '.join(tokens[:k])}|{name}", ("not " if negated else "") + value
    return None


def _copula(tokens: list[str]) -> tuple[str, str] | None:
    """'My address is 12 Oak St' -> ('my address', '12 oak st'); 'The meeting is at 10' -> ('the meeting|at', ...)."""
    at = next((i for i, w in enumerate(tokens) if w in _COPULAS or w in _PAST_COPULAS), None)
    if at is None or tokens[at] in _PAST_COPULAS or not 1 <= at <= 6:
        return None
    subj, rest = tokens[:at], tokens[at + 1:]
    of = subj.index("of") if "of" in subj[1:-1] else None
    definite = subj[0] in _DETERMINERS or "s" in subj[1:-1] or of is not None
    head = subj[of - 1] if of is not None else subj[-1]  # "the name of my dog": a name
    if not definite or not _meaningful(subj) or head in _STOP or head in _ENTITY_HEADS:
        return None
    value = _value(rest)
    if not value:
        return None
    key = " ".join(subj)
    head = next((w for w in value.split() if w not in _NEGATIONS and w != "longer"), None)
    if head in _PREPOSITIONS:
        key += f"|{head}"
    return key, value


def statement(text: str) -> tuple[str, str] | None:
    """(subject key, value) of a statement, or None."""
    first = _SENTENCE_END.split(unicodedata.normalize("NFKC", text).strip(), maxsplit=1)[0].strip()
    if not first or first.endswith("?"):
        return None
    for _ in range(2):  # a generic label ("Update: ...") is set aside once
        match = _LABEL.search(first)
        tokens = _tokens(first[:match.start()]) if match else []
        if match and not any(w in _COPULAS or w in _PAST_COPULAS for w in tokens):
            if " ".join(tokens) in _GENERIC_LABELS:
                first = first[match.end():]
                continue
            return _label(first, match)
        break
    tokens = _tokens(first)
    if not tokens:
        return None
    return _verb(tokens) or _copula(tokens)


def subject(text: str) -> str | None:
    """The subject key of a statement ("my address", "alice|lives"), or None when it has none
    (see the module's docstring for the rule)."""
    found = statement(text)
    return found[0] if found else None
