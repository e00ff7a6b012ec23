"""Corpus search: BM25 over SQLite FTS5, safe queries, incremental and crash-safe index, lookup, tools."""

import logging
import os
import shutil
import sqlite3

import pytest

from tokenomy.errors import UserError
from tokenomy.tools import CorpusIndex, ToolArgumentError, example_corpus_dir, lookup_tool, search_tool
from tokenomy.tools.builtin import corpus_store
from tokenomy.tools.builtin.chunking import fts_query, paragraphs
from tokenomy.tools.builtin.search import INDEX_FILENAME


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    shutil.copytree(example_corpus_dir(), d, ignore=shutil.ignore_patterns(".*"))
    return d


def rowids(index):
    with sqlite3.connect(index.index_path) as conn:
        return conn.execute("SELECT rowid, path FROM chunks ORDER BY rowid").fetchall()


def test_bundled_corpus_ships_fictional_markdown():
    files = sorted(p.name for p in example_corpus_dir().glob("*.md"))
    assert len(files) == 5 and "velmora.md" in files
    for name in files:
        words = len((example_corpus_dir() / name).read_text().split())
        assert 150 <= words <= 300, (name, words)


def test_bm25_ranks_the_right_paragraph_first(corpus):
    index = CorpusIndex(corpus)
    top = index.search("population of Velmora", k=2)
    assert top[0].startswith("[velmora.md#2] Velmora has a population of 412,000")
    assert len(top) == 2
    assert index.search("Who is the CEO of Halvane Instruments?", k=1)[0].startswith("[halvane-instruments.md#4]")
    assert "638 kilometres" in index.search("What is the length of the river Orrin?", k=1)[0]
    first = index.search("Pellhaven founded", k=1)[0]
    assert first.startswith("[pellhaven.md#1] Pellhaven Pellhaven is a port town")  # heading marks dropped
    hits = index.hits("tide gauge", k=5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # the one Hit: higher is better
    assert [h.rank for h in hits] == list(range(len(hits))) and hits[0].chunk.cite == "corvin-halvane.md#3"
    assert index.search("zebra quantum", k=3) == []


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b", "a AND OR NOT", "col:umn * ^ - + ()", "   ",
                                   "'; DROP TABLE", "Velmora's \"population\"?!", "ümlaut — Velmora…"])
def test_punctuation_heavy_queries_do_not_crash(corpus, query):
    out = CorpusIndex(corpus).search(query, k=3)
    assert isinstance(out, list) and len(out) <= 3


def test_fts_query_quotes_every_term():
    assert fts_query('What is "Velmora"\'s population? AND') == '"velmora" OR "s" OR "population"'
    assert fts_query("the of") == '"the" OR "of"'  # only stopwords: keep them
    assert fts_query("?!") is None


def test_paragraphs_keep_headings_with_their_text():
    assert paragraphs("# Title\n\nFirst para\nline two.\n\n\n  \nSecond.\n") == ["# Title\nFirst para\nline two.",
                                                                            "Second."]


def test_index_is_kept_beside_the_corpus_and_reused(corpus):
    index = CorpusIndex(corpus)
    assert index.index_path == corpus / INDEX_FILENAME
    index.refresh()
    assert index.last_refresh.added == 5
    before = rowids(index)
    again = CorpusIndex(corpus)  # a new process would do the same
    stats = again.refresh()
    assert stats.reindexed == 0 and stats.unchanged == 5
    assert rowids(again) == before
    # Files older than the racy window are not even read again.
    for p in corpus.glob("*.md"):
        os.utime(p, ns=(p.stat().st_mtime_ns - 10**10,) * 2)
    again.refresh()
    assert again.refresh().hashed == 0 and rowids(again) == before


def test_changed_added_removed_files_are_reindexed(corpus):
    index = CorpusIndex(corpus)
    index.refresh()
    (corpus / "velmora.md").write_text("# Velmora\n\nVelmora has a population of 999,999 zorblings.\n")
    (corpus / "notes.txt").write_text("The Quenby ferry is painted yellow.\n")
    (corpus / "pellhaven.md").unlink()
    os.utime(corpus / "halvane-instruments.md")  # touched, not changed
    stats = index.refresh()
    assert (stats.added, stats.changed, stats.removed) == (1, 1, 1)
    assert index.search("zorblings", k=1)[0].startswith("[velmora.md#1]")
    assert index.search("ferry yellow", k=1)[0] == "[notes.txt#1] The Quenby ferry is painted yellow."
    assert not any("pellhaven.md" in r for r in index.search("Pellhaven lighthouse Lantern House", k=10))
    assert all("412,000" not in r for r in index.search("population", k=10))


def test_interrupted_update_leaves_the_previous_index(corpus, monkeypatch):
    index = CorpusIndex(corpus)
    index.refresh()
    before = rowids(index)
    (corpus / "a-new.md").write_text("Brand new paragraph about glass.\n")
    (corpus / "velmora.md").write_text("Replaced text.\n")

    def crash(conn, rel, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_store.CorpusStore, "_index_file", staticmethod(crash))
    with pytest.raises(KeyboardInterrupt):
        index.refresh()
    assert rowids(index) == before
    monkeypatch.undo()
    stats = index.refresh()
    assert (stats.added, stats.changed) == (1, 1)


@pytest.mark.parametrize("damage", [b"this is not a sqlite database at all" * 100, "old-version"])
def test_corrupt_or_stale_index_is_rebuilt_with_a_warning(corpus, caplog, damage):
    index = CorpusIndex(corpus)
    index.refresh()
    if damage == "old-version":
        with sqlite3.connect(index.index_path) as conn:
            conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    else:
        index.index_path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="tokenomy.tools.builtin.search"):
        top = CorpusIndex(corpus).search("population of Velmora", k=1)
    assert top[0].startswith("[velmora.md#2]")
    assert "unusable" in caplog.text and "rebuilding" in caplog.text


def test_damage_found_while_reading_is_recovered(corpus, monkeypatch):
    index = CorpusIndex(corpus)
    index.refresh()
    real = index.store.sync
    calls = []

    def sync_once_broken(conn):
        if not calls:
            calls.append(1)
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(conn)

    monkeypatch.setattr(index.store, "sync", sync_once_broken)
    assert index.search("Orrin length", k=1)[0].startswith("[orrin-river.md#1]")
    assert index.recoveries == 1


def test_unwritable_corpus_dir_uses_the_cache(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_store, "_writable", lambda path: False)
    index = CorpusIndex(corpus)
    assert index.index_path.parent == tmp_path / "cache" / "indexes"
    assert index.search("Velmora mayor", k=1)
    assert not (corpus / INDEX_FILENAME).exists()


def test_huge_output_is_truncated(corpus):
    (corpus / "huge.txt").write_text("megalith " * 50_000)
    index = CorpusIndex(corpus, max_chars=200)
    (result,) = index.search("megalith", k=1)
    assert result.startswith("[huge.txt#1] megalith") and len(result) <= 200 and result.endswith("…")
    tool = search_tool(corpus, max_chars=120)
    assert all(len(r) <= 120 for r in tool.invoke(query="Velmora glassworks", k=3))


def test_lookup(corpus):
    index = CorpusIndex(corpus)
    assert index.lookup("Velmora", "population") == "412,000 [velmora.md#2]"
    assert index.lookup("Halvane Instruments", "CEO") == "Marisol Adeyemi-Toft [halvane-instruments.md#4]"
    assert index.lookup("River Orrin", "length") == "638 kilometres [orrin-river.md#1]"
    assert index.lookup("Pellhaven", "founded") == "1702 [pellhaven.md#1]"
    assert index.lookup("Pellhaven", "ferry crossing time") == "90 minutes [pellhaven.md#3]"  # "ninety minutes"
    assert index.lookup("Corvin Halvane", "died") == "2008 [corvin-halvane.md#1]"  # "(1931 - 2008)"
    assert index.lookup("Velmora", "airport").startswith("not found; the text on Velmora gives: ")
    assert index.lookup("Atlantis", "population") == "not found: no text names Atlantis"
    with pytest.raises(ToolArgumentError, match="entity"):
        index.lookup("?!", "population")
    with pytest.raises(ToolArgumentError, match="attribute"):
        index.lookup("Velmora", "--")


def test_search_and_lookup_tools(corpus):
    search = search_tool(corpus)
    lookup = lookup_tool(CorpusIndex(corpus))
    assert search.signature() == "search(query: str, k: int = 3) -> list[str]"
    assert lookup.signature() == "lookup(entity: str, attribute: str) -> str"
    assert len(search.invoke(query="Velmora")) == 3
    with pytest.raises(ToolArgumentError, match="k"):
        search.invoke(query="Velmora", k=0)
    assert "1962" in lookup.invoke(entity="Halvane Instruments", attribute="founded")
    assert not search.side_effects and not lookup.side_effects


def test_missing_corpus_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        CorpusIndex(tmp_path / "nope")
