"""Each ranking signal on small hand-made cases: full-text, vector, their
fusion, and the context a conversation hit brings (plaintext/retrieval.py)."""

from __future__ import annotations

import json

import pytest

from memos_cli.plaintext.retrieval import (
    CONTEXT_BOTH,
    WEIGHT_RELEVANCE,
    WEIGHT_TEXT,
    WEIGHT_VECTOR,
    Hit,
    _minmax,
    wants_context,
)
from memos_cli.plaintext.units import MemoryUnit, parse_time

T1 = "2023-05-08T13:56:00"
T2 = "2023-06-01T10:00:00"
CONVERSATION = [  # one session: episodes with the same time, imported in order
    ("Mel: How was the weekend?", T1),
    ("Caroline: Busy! I went to a support group meeting on Saturday.", T1),
    ("Mel: Did it help?", T1),
    ("Caroline: Yes, a lot. Everyone there was kind.", T1),
    ("Mel: I am glad to hear that.", T1),
    ("Caroline: I painted a sunrise over the lake last week.", T2),  # another session
    ("Caroline: The painting is for my grandmother.", T2),
]


def load(store, rows):
    records = [(i + 1, {"text": text, "time": when, "kind": "episode", "meta": {"n": i}})
               for i, (text, when) in enumerate(rows)]
    return store.import_records(records)


def test_minmax_scales_a_pool_to_0_1() -> None:
    assert _minmax([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert _minmax([5.0, 5.0]) == [1.0, 1.0]  # a pool of equal scores is all 1
    assert _minmax([]) == []


def test_the_rare_words_of_the_query_rank_first(store) -> None:
    store.add("The quarterly invoice for the Zanzibar office is overdue.")
    store.add("The office plants need water on Mondays.")
    store.add("Lunch was a sandwich.")
    [top, *_] = store.recall("Zanzibar invoice", 3, context=False)
    assert "Zanzibar" in top.unit.text
    assert top.signals["text_rank"] == 1 and top.signals["text_norm"] == 1.0


def test_a_paraphrase_is_found_by_the_vector_signal_alone(store) -> None:
    store.add("My dog loves running on the beach.")
    store.add("The tax return is due in April.")
    hits = store.recall("puppy playing by the sea", 2, context=False)
    assert "dog" in hits[0].unit.text
    assert "text_rank" not in hits[0].signals  # no shared word: the full-text pool never saw it
    assert hits[0].signals["vector_rank"] == 1
    assert hits[0].signals["fused"] == pytest.approx(WEIGHT_VECTOR * hits[0].signals["vector_norm"], abs=1e-6)


def test_fusion_adds_both_signals_with_their_weights(store) -> None:
    store.add("Alice drinks green tea every morning.")
    store.add("Green paint for the fence.")
    store.add("Bob prefers coffee.")
    for hit in store.recall("what tea does Alice drink", 3, context=False):
        sig = hit.signals
        fused = WEIGHT_TEXT * sig.get("text_norm", 0) + WEIGHT_VECTOR * sig.get("vector_norm", 0)
        assert sig["fused"] == pytest.approx(fused, abs=1e-6)
        # The best candidates' own relevance is mixed in (see retrieval's docstring).
        assert hit.score == pytest.approx((fused + WEIGHT_RELEVANCE * sig["unit_relevance"]) / (1 + WEIGHT_RELEVANCE),
                                          abs=1e-4)
    top = store.recall("what tea does Alice drink", 1, context=False)[0]
    assert "Alice" in top.unit.text and top.signals["text_rank"] == 1 and top.signals["vector_rank"] == 1


def hit(text: str, kind: str = "episode", when: str | None = T1) -> Hit:
    unit = MemoryUnit(id="01m7yq0hz716rh", text=text, kind=kind, time=parse_time(when) if when else None,
                      created_at=parse_time("2026-01-01T00:00:00"))
    return Hit(unit, 1.0, {})


def test_which_hits_want_context() -> None:
    assert wants_context(hit("Caroline: I went."), 0)[:2] == (True, True)  # a top hit: both neighbours
    assert wants_context(hit("Caroline: I went."), CONTEXT_BOTH - 1)[:2] == (True, True)
    assert wants_context(hit("Caroline: I went."), CONTEXT_BOTH)[:2] == (False, False)  # lower, no question
    assert wants_context(hit("Mel: Did it help?"), CONTEXT_BOTH + 3)[:2] == (False, True)  # a question: its answer
    assert wants_context(hit("A note.", kind="note"), 0)[:2] == (False, False)  # only conversation turns
    assert wants_context(hit("Mel: hi", when=None), 0)[:2] == (False, False)
    # A time that defaulted to the moment it was remembered marks no session (a bulk import without times).
    assert wants_context(hit("Mel: hi", when="2026-01-01T00:00:00"), 0)[:2] == (False, False)


def test_a_top_hit_brings_the_turns_around_it_in_its_own_session(store) -> None:
    units = load(store, CONVERSATION)
    top = store.recall("support group meeting", 1)[0]
    assert top.unit.id == units[1].id
    assert [u.id for u in top.before] == [units[0].id] and [u.id for u in top.after] == [units[2].id]
    data = top.to_json(explain=True)
    assert data["text"] == "\n".join(u.text for u in units[0:3])
    assert [s["n"] for s in data["sources"]] == [0, 2] and data["context"] == [units[0].id, units[2].id]
    assert "top" in data["explain"]["context"]
    # The last turn of a session has no turn after it in that session (the next unit is another session's).
    last = store.recall("glad to hear that", 1)[0]
    assert last.unit.id == units[4].id and last.after == [] and [u.id for u in last.before] == [units[3].id]
    # Without context, the bare units.
    bare = store.recall("support group meeting", 1, context=False)[0]
    assert bare.before == bare.after == [] and bare.to_json()["text"] == units[1].text


def test_context_is_not_repeated_and_obeys_the_filters(store) -> None:
    units = load(store, CONVERSATION)
    hits = store.recall("Caroline support group kind everyone", 2)
    ids = [h.unit.id for h in hits]
    assert set(ids) == {units[1].id, units[3].id}
    shown = [u.id for h in hits for u in (*h.before, h.unit, *h.after)]
    assert len(shown) == len(set(shown))  # the turn between them comes once
    # A forgotten turn never comes back as context.
    store.forget([units[0].id])
    top = store.recall("support group meeting", 1)[0]
    assert top.unit.id == units[1].id and top.before == []


def test_recall_explain_on_the_command_line(cli, tmp_path) -> None:
    lines = "".join(json.dumps({"text": t, "time": w, "kind": "episode", "meta": {"n": i}}) + "\n"
                    for i, (t, w) in enumerate(CONVERSATION))
    assert cli("import", "-", input=lines).returncode == 0
    done = cli("recall", "support group meeting", "-k", "2", "--explain", "--json")
    assert done.returncode == 0, done.err
    top = json.loads(done.out)["results"][0]
    assert set(top["explain"]) == {"score", "fused", "unit_relevance", "text", "vector", "context", "closed", "relevance"}
    assert top["explain"]["text"]["rank"] == 1 and top["explain"]["text"]["weight"] == WEIGHT_TEXT
    assert len(top["context"]) == 2
    table = cli("recall", "support group meeting", "-k", "2", "--explain")
    assert table.returncode == 0 and "bm25" in table.out and "context" in table.out
    bare = json.loads(cli("recall", "support group meeting", "-k", "1", "--no-context", "--json").out)["results"][0]
    assert bare["context"] == [] and "explain" not in bare


def test_candidates_mostly_forgotten_fall_back_to_a_filtered_search(store, monkeypatch) -> None:
    """Recall searches without the live filter and drops the dead candidates; when too few live
    ones are left, it searches again with the filter, and finds what a filtered search finds."""
    from memos_cli.plaintext import retrieval
    from memos_cli.plaintext.retrieval import Filters, hybrid_search
    from memos_cli.plaintext.units import utcnow

    units = load(store, [(f"Zebra sighting number {i} at the river.", T1) for i in range(130)])
    store.forget([u.id for u in units[:110]])
    live_ids = {u.id for u in units[110:]}
    filters_seen: list[str | None] = []
    search = retrieval._search
    monkeypatch.setattr(retrieval, "_search", lambda ds, where, n, **kw: filters_seen.append(where) or search(ds, where, n, **kw))
    hits = store.recall("zebra sighting", 15, context=False)
    assert filters_seen[:2] == [None, None] and len(filters_seen) == 4  # both searched again, filtered
    assert all("status = 'active'" in (f or "") for f in filters_seen[2:])
    assert len(hits) == 15 and {h.unit.id for h in hits} <= live_ids
    filters = Filters()
    where = filters.sql(now=utcnow())
    plain = store.table.read(lambda ds: hybrid_search(ds, "zebra sighting", store.embedder.embed_query, 15, where))
    assert [h.unit.id for h in plain] == [h.unit.id for h in hits]


def test_a_warm_process_recalls_the_same_through_its_row_index(store) -> None:
    units = load(store, CONVERSATION)
    store.forget([units[2].id])
    first = store.recall("support group", 3)  # the process's first recall of this version: no index
    assert store.table._row_index is None
    again = store.recall("support group", 3)  # the second builds the index and answers from it
    assert store.table._row_index is not None
    assert [h.to_json() for h in again] == [h.to_json() for h in first]
    assert any(h.before or h.after for h in again)
    store.add("Mel: one more turn", kind="episode")  # a new version: the index is built anew when used twice
    assert store.recall("support group", 3)[0].unit.id == first[0].unit.id
