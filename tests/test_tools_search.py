"""Corpus search: BM25 over SQLite FTS5, safe queries, incremental and crash-safe index, lookup, tools."""

import logging
import os
import re
import shutil
import sqlite3

import pytest

from tokenomy.errors import UserError
from tokenomy.tools import CorpusIndex, ToolArgumentError, example_corpus_dir, lookup_tool, search_tool
from tokenomy.tools.builtin import search as search_module
from tokenomy.tools.builtin.chunking import fts_query, paragraphs
from tokenomy.tools.builtin.search import INDEX_FILENAME
from tokenomy.tools.rag.store import RagStore


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    shutil.copytree(example_corpus_dir(), d, ignore=shutil.ignore_patterns(".*"))
    return d


def rowids(index):
    with sqlite3.connect(index.index_path) as conn:
        return conn.execute("SELECT c.id, d.path FROM chunks c JOIN docs d ON d.id = c.doc_id ORDER BY c.id").fetchall()


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

    def crash(doc):  # the first file read (a-new.md): interrupted before its transaction
        raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "_paragraph_chunks", crash)
    with pytest.raises(KeyboardInterrupt):
        index.refresh()
    assert rowids(index) == before
    monkeypatch.undo()
    stats = index.refresh()
    assert (stats.added, stats.changed) == (1, 1)


# -- the one corrupt-file policy (RagStore's): refuse and say how to rebuild; rebuild only what is provably ours --


def test_a_damaged_index_beside_the_corpus_is_refused_with_how_to_rebuild_it(corpus):
    index = CorpusIndex(corpus)
    index.refresh()
    index.close()
    damage = b"this is not a sqlite database at all" * 100
    index.index_path.write_bytes(damage)
    with pytest.raises(UserError, match=r"not a tokenomy search index \(not a SQLite database\).*left as it is: "
                                        rf"delete {re.escape(str(index.index_path))} and the next search rebuilds"):
        CorpusIndex(corpus)
    assert index.index_path.read_bytes() == damage  # never overwritten: the name may be ours, the bytes are not
    index.index_path.unlink()  # what the message says to do
    assert CorpusIndex(corpus).search("population of Velmora", k=1)[0].startswith("[velmora.md#2]")


def test_a_foreign_database_or_a_rag_store_at_the_index_path_is_never_overwritten(corpus, tmp_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE people(name TEXT)")
        conn.execute("INSERT INTO people VALUES ('Ana')")
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="without tokenomy's RAG tables.*left as it is"):
        CorpusIndex(corpus, index_path=foreign)
    assert foreign.read_bytes() == before
    with RagStore(tmp_path / "store.sqlite") as store:  # tokenomy's, but a RAG store: not to be rebuilt or mixed
        store.ingest(corpus)
    before = (tmp_path / "store.sqlite").read_bytes()
    with pytest.raises(UserError, match="a RAG store .*not a search index"):
        CorpusIndex(corpus, index_path=tmp_path / "store.sqlite")
    assert (tmp_path / "store.sqlite").read_bytes() == before
    with pytest.raises(UserError, match="search index of a directory.*not a RAG store"):  # and the other way round
        RagStore(CorpusIndex(corpus).index_path)


@pytest.mark.parametrize("stale", ["other-version", "older-tokenomy"])
def test_our_own_stale_index_is_rebuilt_with_a_warning(corpus, caplog, stale):
    index = CorpusIndex(corpus)
    index.refresh()
    index.close()
    if stale == "other-version":
        with sqlite3.connect(index.index_path) as conn:
            conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    else:  # the file that tokenomy's search index was before it became a store
        index.index_path.unlink()
        with sqlite3.connect(index.index_path) as conn:
            conn.executescript("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                               "CREATE TABLE files(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha1 TEXT);"
                               "CREATE VIRTUAL TABLE chunks USING fts5(path UNINDEXED, n UNINDEXED, title, text);"
                               "INSERT INTO meta VALUES ('schema_version', '1');")
    with caplog.at_level(logging.WARNING, logger="tokenomy.tools.rag"):
        again = CorpusIndex(corpus)
        top = again.search("population of Velmora", k=1)
    assert top[0].startswith("[velmora.md#2]") and again.recoveries == 1
    assert "unusable" in caplog.text and "rebuilding" in caplog.text


def test_a_damaged_index_in_our_cache_directory_is_rebuilt(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(search_module, "_writable", lambda path: False)
    path = search_module.default_index_path(corpus.resolve())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage, not an index" * 50)  # tokenomy's own directory: nothing else writes there
    with caplog.at_level(logging.WARNING, logger="tokenomy.tools.rag"):
        index = CorpusIndex(corpus)
    assert index.index_path == path and index.recoveries == 1 and "unusable" in caplog.text
    assert index.search("population of Velmora", k=1)[0].startswith("[velmora.md#2]")


def test_damage_found_while_reading_is_recovered(corpus, tmp_path, monkeypatch):
    index = CorpusIndex(corpus)
    index.refresh()
    real = RagStore.ingest
    calls = []

    def ingest_once_broken(self, *args, **kwargs):
        if not calls:
            calls.append(1)
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RagStore, "ingest", ingest_once_broken)
    assert index.search("Orrin length", k=1)[0].startswith("[orrin-river.md#1]")
    assert index.recoveries == 1
    with RagStore(tmp_path / "user.sqlite") as store:  # a RAG store is never rebuilt
        with pytest.raises(UserError, match="not rebuilt.*re-ingest"):
            store.rebuild("damaged")
    assert (tmp_path / "user.sqlite").exists()


def test_unwritable_corpus_dir_uses_the_cache(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(search_module, "_writable", lambda path: False)
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
