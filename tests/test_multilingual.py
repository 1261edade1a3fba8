"""Full-text search in Chinese, Japanese and Korean, across accents and emoji, with English stemming kept.

Each check looks at the BM25 half of recall (a hit's ``text_rank``, what `recall --explain`
shows): the vector half alone would find some of these, and hide that full-text search did not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TEXTS = {
    "zh_passport": "我的护照放在书桌左边的抽屉里",
    "zh_shop": "我昨天在超市买了牛奶和面包",
    "zh_trip": "下个月我们去北京看长城",
    "ja_passport": "パスポートは寝室の引き出しの中にあります",
    "ja_meeting": "明日の午後は東京で会議があります",
    "ko_passport": "여권을 책상 서랍에 넣었어요",
    "resume": "Caroline sent her résumé to the bakery on Monday",
    "cafe": "We met at the Café Central in Vienna",
    "moving": "Melanie is moving to Lisbon next spring",
    "dog": "Our dog 🐶 sleeps on the sofa all afternoon",
    "report": "The quarterly report is due on Friday",
}


def make_store(root: Path, embedder) -> tuple[Any, dict[str, str]]:
    """An 11-unit store (one import) and its units' ids by name."""
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root, embedder=embedder)
    made = store.import_records(enumerate(({"text": text} for text in TEXTS.values()), 1))
    return store, dict(zip(TEXTS, (u.id for u in made), strict=True))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Any, dict[str, str]]:
    """One store for the tests that only read it."""
    return make_store(tmp_path_factory.mktemp("multilingual") / "store", embedder)


@pytest.fixture
def store(shared: tuple[Any, dict[str, str]]) -> Any:
    return shared[0]


@pytest.fixture
def units(shared: tuple[Any, dict[str, str]]) -> dict[str, str]:
    return shared[1]


def text_pool(store, query: str) -> list[str]:
    """The ids the full-text (BM25) half of recall found for the query, best first."""
    hits = store.recall(query, k=len(TEXTS), context=False)
    ranked = sorted((h.signals["text_rank"], h.unit.id) for h in hits if h.signals.get("text_rank"))
    return [uid for _, uid in ranked]


@pytest.mark.parametrize("query, name", [
    ("护照", "zh_passport"),
    ("我的护照在哪里？", "zh_passport"),
    ("パスポート", "ja_passport"),
    ("引き出し", "ja_passport"),
    ("여권", "ko_passport"),  # written 여권을, with its particle
    ("牛肉", None),  # beef: one character shared with 牛奶 (milk) is no match
])
def test_full_text_search_finds_chinese_japanese_and_korean_words(store, units, query: str, name: str | None) -> None:
    pool = text_pool(store, query)
    if name is None:
        assert pool == []
        return
    assert pool[:1] == [units[name]], (query, pool)
    top = store.recall(query, k=3, context=False)[0]
    assert top.unit.id == units[name] and top.signals["text_rank"] == 1


def test_a_chinese_query_has_only_its_unit_from_the_text_half(store, units) -> None:
    assert text_pool(store, "护照") == [units["zh_passport"]]


@pytest.mark.parametrize("query, name", [
    ("resume", "resume"),
    ("résumé", "resume"),
    ("RESUMES", "resume"),
    ("cafe", "cafe"),
    ("Café", "cafe"),
])
def test_accented_words_match_their_unaccented_forms(store, units, query: str, name: str) -> None:
    assert text_pool(store, query) == [units[name]]


def test_english_stemming_still_works(store, units) -> None:
    assert text_pool(store, "who moved?") == [units["moving"]]
    assert text_pool(store, "reports") == [units["report"]]


def test_an_emoji_is_a_word(store, units) -> None:
    assert text_pool(store, "🐶") == [units["dog"]]


def test_a_table_of_the_previous_format_is_rebuilt_and_then_finds_cjk(tmp_path: Path, embedder) -> None:
    """A store whose table predates the terms column (full-text index on ``text``): recall
    still works on it as it is, and the next command rebuilds it in the current format."""
    import lance
    import lancedb
    from lancedb.index import FTS

    from memos_cli.plaintext.retrieval import hybrid_search
    from memos_cli.plaintext.table import FTS_COLUMN, MARKER, TABLE, TABLE_FORMAT
    from memos_cli.store.store import MemoryStore

    store, units = make_store(tmp_path / "store", embedder)
    table = store.table
    old = table.ds.to_table().drop_columns([FTS_COLUMN])
    db = lancedb.connect(str(table.dir))
    db.create_table(TABLE, data=old, mode="overwrite").create_index("text", config=FTS(), name="text_idx")
    marker = table.dir / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format": 2}))

    reopened = MemoryStore(store.root, embedder=embedder)
    ds = lance.dataset(str(reopened.table.path))
    assert FTS_COLUMN not in ds.schema.names
    hits = hybrid_search(ds, "who moved?", embedder.embed_query, 3, None)  # as a reader that cannot rebuild
    assert hits[0].unit.id == units["moving"] and hits[0].signals["text_rank"] == 1

    assert text_pool(reopened, "护照") == [units["zh_passport"]]  # rebuilt first
    assert reopened.table.marker()["format"] == TABLE_FORMAT
    assert FTS_COLUMN in reopened.table.ds.schema.names
