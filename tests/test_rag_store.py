"""RAG store: reading and chunking documents, incremental and crash-safe ingestion, BM25, refusing foreign files."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tokenomy.errors import UserError
from tokenomy.kernels.tokens import count_text
from tokenomy.tools.builtin.chunking import sentences
from tokenomy.tools.rag import store as store_module
from tokenomy.tools.rag.documents import parse_document, read_document, split_chunks
from tokenomy.tools.rag.store import RagStore

from .conftest import require_module
from .rag_doubles import HashEmbedder

OLD = 1_600_000_000  # an mtime long past: files with it are not "racy" and are skipped on size + mtime alone


def extract(text):
    """Test double: one triplet per sentence whose first two words are the subject and relation."""
    out = []
    for s in sentences(text):
        ws = s.rstrip(".").split()
        if len(ws) >= 3:
            out.append((ws[0], ws[1], " ".join(ws[2:]), s))
    return out


def write(path, text, mtime=OLD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    write(d / "velmora.md", "# Velmora\nVelmora is a city on the coast.\n\n## People\n"
                            "Velmora has a population of 412,000. Most people fish.\n")
    write(d / "orrin.txt", "The Orrin river is 638 kilometres long. It floods in spring.")
    write(d / "sub" / "halvane.html", "<html><head><title>Halvane</title><script>var x = 'zebra';</script></head>"
                                      "<body><h1>Halvane Instruments</h1><p>Halvane makes tide gauges.</p>"
                                      "<h2>Leadership</h2><p>Mara Quist is the CEO of Halvane.</p></body></html>")
    write(d / ".git" / "config.md", "hidden folder")
    write(d / ".notes.md", "hidden file")
    write(d / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    return d


def consistent(store):
    """Every chunk has its FTS row, vector and doc; nothing points at a chunk that is gone."""
    conn = sqlite3.connect(store.path)
    conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")  # index == chunks
    ids = {r[0] for r in conn.execute("SELECT id FROM chunks")}
    assert {r[0] for r in conn.execute("SELECT chunk_id FROM vectors")} <= ids
    assert {r[0] for r in conn.execute("SELECT chunk_id FROM triplets")} <= ids
    assert not conn.execute("SELECT 1 FROM chunks WHERE doc_id NOT IN (SELECT id FROM docs)").fetchall()
    conn.close()


def fts_ids(store, word):
    with sqlite3.connect(store.path) as conn:
        return {r[0] for r in conn.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{word}"',))}


# -- documents ------------------------------------------------------------------------------------------------


def test_chunks_respect_headings_sentences_and_max_tokens():
    long_par = " ".join(f"Sentence number {i} talks about the harbour of Velmora." for i in range(40))
    text = textwrap.dedent(f"""\
        Preamble before any heading.

        # Intro
        Short intro. Still intro.

        ## Setup
        {long_par}

        ```sh
        # a shell comment, not a heading
        make
        ```

        # Other
        {"word " * 300}
        """)
    chunks = split_chunks(text, max_tokens=60)
    assert chunks[0] == ("", "Preamble before any heading.")
    assert chunks[1] == ("Intro", "Short intro. Still intro.")
    headings = [h for h, _ in chunks]
    assert set(headings) == {"", "Intro", "Intro > Setup", "Other"}
    assert headings == sorted(headings, key=["", "Intro", "Intro > Setup", "Other"].index)  # never interleaved
    for _, body in chunks:
        assert body.strip() and count_text(body) <= 60
        assert not {"# Intro", "## Setup", "# Other"} & set(body.splitlines())
    setup = [b for h, b in chunks if h == "Intro > Setup"]
    assert len(setup) > 2 and all(b.endswith((".", "```")) for b in setup)  # cut between sentences only
    assert any("# a shell comment" in b for b in setup)
    assert " ".join(setup).count("Sentence number") == 40
    other = [b for h, b in chunks if h == "Other"]
    assert len(other) > 1 and " ".join(other).split() == ["word"] * 300  # one huge sentence: cut between words
    # overlap: each chunk after the first of a section starts with the last sentence of the one before
    over = split_chunks(long_par, max_tokens=60, overlap_sentences=1)
    for prev, nxt in zip(over, over[1:], strict=False):
        assert nxt[1].startswith(sentences(prev[1])[-1])
    assert split_chunks("# a\n## b\n", max_tokens=50)  # only headings: still a chunk, never an empty one
    assert split_chunks("#hashtag is text", max_tokens=50) == [("", "#hashtag is text")]
    with pytest.raises(UserError):
        split_chunks("x", max_tokens=0)


def test_one_sentence_splitter_for_search_extraction_and_chunking():
    from tokenomy.tools.builtin.chunking import sentence_spans

    text = ("# Kelmar\nDr. Ana Voss founded Kelmar Inc. in 1893. It makes gauges! \"Good.\" 3,400 people work there"
            "\n- one\n- two")
    assert sentences(text) == ["Dr. Ana Voss founded Kelmar Inc. in 1893.", "It makes gauges!", '"Good."',
                               "3,400 people work there", "one", "two"]
    assert sentences("Ends here\n## Next\nNew one. e.g. not cut") == ["Ends here", "New one. e.g. not cut"]
    assert sentence_spans("A  b.\n- x") == [("", "A  b."), ("\n", "- x")]  # as written, with the separators


def test_html_keeps_visible_text_and_headings(tmp_path):
    page = write(tmp_path / "page.htm", "<!doctype html><html><head><title>The Page</title><style>p{}</style>"
                                        "</head><body><script>alert('no')</script><h1>Top</h1><p>First &amp; "
                                        "<b>bold</b>.</p><ul><li>one</li><li>two</li></ul><h3>Deep</h3>"
                                        "<p>Line<br>break</p><noscript>js off</noscript></body></html>")
    doc = read_document(page)
    assert (doc.kind, doc.title, doc.encoding) == ("html", "The Page", "utf-8")
    assert "alert" not in doc.text and "p{}" not in doc.text and "js off" not in doc.text
    assert doc.text.startswith("# Top\n\nFirst & bold.\n\none\n\ntwo\n\n### Deep\n\nLine\n\nbreak")
    assert split_chunks(doc.text) == [("Top", "First & bold.\n\none\n\ntwo"), ("Top > Deep", "Line\n\nbreak")]


def test_encodings(tmp_path):
    assert read_document(write(tmp_path / "bom.txt", "\ufeffhello".encode())).text == "hello"
    legacy = read_document(write(tmp_path / "legacy.txt", "café — “quoted”".encode("cp1252")))
    assert (legacy.text, legacy.encoding) == ("café — “quoted”", "cp1252")
    utf16 = read_document(write(tmp_path / "wide.md", "# Wide\ntext".encode("utf-16")))
    assert (utf16.title, utf16.encoding) == ("Wide", "utf-16")


BAD = {
    "empty.txt": (b"", "empty"),
    "blank.md": (b" \n\t\r\n ", "empty"),
    "nul.txt": (b"text\x00more text", "binary"),
    "noise.md": (bytes(range(1, 32)) * 20, "not text"),
    "huge.txt": (b"x" * 2048, "max_bytes"),
    "scripts.html": (b"<script>only()</script><style>a{}</style>", "no text"),
    "doc.pdf": (b"%PDF-1.4 nothing", "pypdf"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_are_refused_by_name_and_skipped_by_ingest(tmp_path, name):
    data, why = BAD[name]
    if name.endswith(".pdf") and importlib.util.find_spec("pypdf"):
        why = "cannot read this PDF"
    bad = write(tmp_path / "docs" / name, data)
    write(tmp_path / "docs" / "good.md", "# Good\nA fine document.")
    with pytest.raises(UserError, match=re.escape(name)) as err:
        read_document(bad, max_bytes=1024)
    assert why in str(err.value)
    with RagStore(tmp_path / "s.sqlite") as store:
        stats = store.ingest(tmp_path / "docs", max_bytes=1024)
        assert (stats.added, [p for p, _ in stats.skipped]) == (1, [name])
        assert name in stats.skipped[0][1] and store.stats()["docs"] == 1


def test_unsupported_suffix_is_refused(tmp_path):
    with pytest.raises(UserError, match="unsupported"):
        parse_document(tmp_path / "x.docx", b"data")


# -- ingestion ------------------------------------------------------------------------------------------------


def test_ingest_walks_a_directory_and_reads_back(tmp_path, corpus):
    seen = []
    with RagStore(tmp_path / "s.sqlite") as store:
        stats = store.ingest(corpus, embedder=HashEmbedder(), extract=extract, on_file=lambda p, s: seen.append(p))
        assert (stats.added, stats.skipped, stats.chunks) == (3, [], stats.vectors)
        assert seen == ["orrin.txt", "sub/halvane.html", "velmora.md"]  # hidden and unsupported files skipped
        all_chunks = store.all_chunks()
        assert [c.cite for c in all_chunks][:2] == ["orrin.txt#1", "sub/halvane.html#1"]
        assert all_chunks[-1].heading == "Velmora > People" and all_chunks[-1].text.startswith("Velmora has")
        ids = [c.id for c in all_chunks]
        assert store.chunks(ids[::-1]) == all_chunks[::-1] and store.chunk(ids[0]) == all_chunks[0]
        with pytest.raises(UserError, match="no chunk"):
            store.chunk(10_000)
        vids, matrix = store.vectors()
        assert vids == ids and matrix.shape == (len(ids), 64) and matrix.dtype == np.float32
        assert store.vectors()[1] is matrix  # cached
        trip = store.triplets([ids[0]])
        assert trip and trip[0].subject == "The" and trip[0].chunk_id == ids[0]
        assert len(store.triplets()) >= len(trip)
        s = store.stats()
        assert (s["docs"], s["chunks"], s["vectors"], s["embedder"], s["dim"]) == (3, len(ids), len(ids),
                                                                                  "hash-bow", 64)
        consistent(store)


def test_bm25_ranks_the_right_chunk_first(tmp_path, corpus):
    with RagStore(tmp_path / "s.sqlite") as store:
        store.ingest(corpus)
        hits = store.bm25("What is the population of Velmora?", k=3)
        assert hits[0].chunk.cite == "velmora.md#2" and hits[0].rank == 0
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert store.bm25("Who is the CEO of Halvane?", k=1)[0].chunk.path == "sub/halvane.html"
        assert store.bm25("leadership", k=1)[0].chunk.heading == "Halvane Instruments > Leadership"
        assert store.bm25("zebra", k=3) == []  # the script's text was never indexed
        assert store.bm25("", k=3) == [] and store.bm25("?!", k=3) == []


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b", "Velmora AND OR NOT", "col:umn * ^ - + ()", "   ",
                                   "'; DROP TABLE chunks; --", 'river "Orrin"?!', "ümlaut — Velmora…", "-", ":"])
def test_hostile_queries_do_not_crash(tmp_path, corpus, query):
    with RagStore(tmp_path / "s.sqlite") as store:
        store.ingest(corpus)
        hits = store.bm25(query, k=2)
        assert isinstance(hits, list) and len(hits) <= 2
        assert store.stats()["chunks"] > 0


def test_incremental_reingest(tmp_path, corpus, monkeypatch):
    emb = HashEmbedder()
    with RagStore(tmp_path / "s.sqlite") as store:
        store.ingest(corpus, embedder=emb, extract=extract)
        before = {c.cite: c.id for c in store.all_chunks()}
        real_read = store_module.read_bytes

        def no_read(path, *a, **k):
            raise AssertionError(f"{path} was read")

        monkeypatch.setattr(store_module, "read_bytes", no_read)
        stats = store.ingest(corpus, embedder=emb, extract=extract)
        assert (stats.added, stats.updated, stats.unchanged, stats.removed, stats.chunks) == (0, 0, 3, 0, 0)
        monkeypatch.setattr(store_module, "read_bytes", real_read)

        os.utime(corpus / "orrin.txt", (OLD + 100, OLD + 100))  # touched, same content
        old_river = [c for c in store.all_chunks() if c.path == "orrin.txt"]
        (corpus / "velmora.md").write_text("# Velmora\nVelmora now makes violins.\n")  # changed
        (corpus / "sub" / "halvane.html").unlink()  # deleted
        stats = store.ingest(corpus, embedder=emb, extract=extract)
        assert (stats.added, stats.updated, stats.unchanged, stats.removed) == (0, 1, 1, 1)
        after = {c.cite: c.id for c in store.all_chunks()}
        assert [c for c in store.all_chunks() if c.path == "orrin.txt"] == old_river  # not re-chunked
        assert set(after) == {"orrin.txt#1", "velmora.md#1"} and after["velmora.md#1"] != before["velmora.md#1"]
        gone = set(before.values()) - set(after.values())
        assert not fts_ids(store, "population") and not fts_ids(store, "gauges")
        assert fts_ids(store, "violins") == {after["velmora.md#1"]}
        assert set(store.vectors()[0]) == set(after.values())
        assert not {t.chunk_id for t in store.triplets()} & gone
        assert store.bm25("population", k=3) == [] and store.bm25("violins")[0].chunk.cite == "velmora.md#1"
        consistent(store)
        stats = store.ingest(corpus, embedder=emb, extract=extract)  # and then it is quiet again
        assert (stats.added, stats.updated, stats.removed, stats.chunks) == (0, 0, 0, 0)


def test_interrupted_ingest_keeps_whole_files_and_resumes(tmp_path):
    for i in range(5):
        write(tmp_path / "docs" / f"f{i}.md", f"# File {i}\nFile {i} is about topic{i}. It has two sentences.")

    class Interrupting(HashEmbedder):
        def encode(self, texts):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().encode(texts)

    with RagStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            store.ingest(tmp_path / "docs", embedder=Interrupting(), extract=extract)
        assert sorted({c.path for c in store.all_chunks()}) == ["f0.md", "f1.md"]
        assert store.stats()["vectors"] == store.stats()["chunks"] == 2
        consistent(store)
        stats = store.ingest(tmp_path / "docs", embedder=HashEmbedder(), extract=extract)
        assert (stats.added, stats.unchanged) == (3, 2)
        assert store.stats()["docs"] == 5 and store.stats()["vectors"] == 5
        consistent(store)


def test_a_process_killed_inside_a_transaction_leaves_the_file_out(tmp_path):
    for i in range(3):
        write(tmp_path / "docs" / f"f{i}.md", f"Para {i} one.\n\nPara {i} two.\n\nPara {i} three.")
    child = textwrap.dedent(f"""
        import os
        from tokenomy.tools.rag import store as m
        calls = 0
        def count(text):
            global calls
            calls += 1
            if calls == 5:  # inside the 2nd file's transaction, after some of its rows were written
                os._exit(9)
            return len(text)
        m.count_text = count
        m.RagStore({str(tmp_path / "s.sqlite")!r}).ingest({str(tmp_path / "docs")!r}, max_tokens=5)
        """)
    assert subprocess.run([sys.executable, "-c", child], timeout=60).returncode == 9
    with RagStore(tmp_path / "s.sqlite") as store:
        assert [c.cite for c in store.all_chunks()] == ["f0.md#1", "f0.md#2", "f0.md#3"]
        consistent(store)
        assert store.ingest(tmp_path / "docs", max_tokens=5).added == 2
        assert store.stats()["chunks"] == 9


def test_vectors_are_backfilled_and_embedders_never_mixed(tmp_path, corpus):
    with RagStore(tmp_path / "s.sqlite") as store:
        store.ingest(corpus)
        assert store.stats()["vectors"] == 0 and store.stats()["embedder"] is None
        assert store.vectors()[1].shape[0] == 0
        stats = store.ingest(corpus, embedder=HashEmbedder())
        assert stats.unchanged == 3 and stats.vectors == store.stats()["chunks"] == store.stats()["vectors"]
        assert len(store.vectors()[0]) == stats.vectors  # the cache saw the change
        for other in (HashEmbedder(name="another"), HashEmbedder(dim=32)):
            with pytest.raises(UserError, match="hash-bow"):
                store.ingest(corpus, embedder=other)
        assert store.stats()["embedder"] == "hash-bow"


def test_files_given_one_by_one(tmp_path, corpus):
    with RagStore(tmp_path / "s.sqlite") as store:
        stats = store.ingest([corpus / "orrin.txt", corpus / "missing.md"])
        assert stats.added == 1 and stats.skipped[0][0].endswith("missing.md")
        assert store.all_chunks()[0].path == (corpus / "orrin.txt").as_posix()
        with pytest.raises(UserError, match="no such file"):
            store.ingest(tmp_path / "nowhere")


# -- opening --------------------------------------------------------------------------------------------------


def test_foreign_files_and_other_versions_are_refused_untouched(tmp_path):
    text = write(tmp_path / "notes.sqlite", "not a database at all")
    with pytest.raises(UserError, match="not a SQLite database.*delete"):
        RagStore(text)
    assert text.read_text() == "not a database at all"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE people(name TEXT)")
    with pytest.raises(UserError, match="not a tokenomy RAG store"):
        RagStore(other)
    with RagStore(tmp_path / "new" / "s.sqlite") as store:  # a missing path (and folder) is created
        assert store.stats()["docs"] == 0
    with sqlite3.connect(tmp_path / "new" / "s.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="schema version 99.*re-ingest"):
        RagStore(tmp_path / "new" / "s.sqlite")
    with pytest.raises(UserError, match="directory"):
        RagStore(tmp_path)


def _minimal_pdf(lines):
    """A one-page PDF with ``lines`` of text in Helvetica, built by hand (offsets computed, so it is valid)."""
    ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({s}) Tj T*" for s in lines) + " ET"
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(ops), ops.encode()),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def test_pdf_text_is_ingested_and_searchable(tmp_path):
    require_module("pypdf", "pip install 'tokenomy[test]'")
    pdf = write(tmp_path / "docs" / "report.pdf", _minimal_pdf(["Orvel is a town of 8200 people.",
                                                                  "Its mayor is Ana Toll."]))
    doc = read_document(pdf)
    assert doc.kind == "pdf" and "Orvel is a town of 8200 people." in doc.text and "Ana Toll" in doc.text
    with RagStore(tmp_path / "s.sqlite") as store:
        assert store.ingest(tmp_path / "docs").added == 1
        assert store.bm25("mayor of Orvel", 1)[0].chunk.path == "report.pdf"
