"""``tokenomy rag ask``: each flag does what its help says (on a store without vectors and the scripted double)."""

from __future__ import annotations

import json

import pytest

from tokenomy.cli import main
from tokenomy.planners.rag import NO_FIT, NO_MATCH

QUESTION = "Who is the mayor of Orvel?"
ORVEL = "Orvel is a town of 8200 people. Its mayor is Ana Toll. Orvel was founded in 1850."
BRISK = "Brisk is a village of 640 people. Its mayor is Ivo Marr. The river Lune runs through Brisk."


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs")
    (docs / "a.md").write_text(f"# Orvel\n\n{ORVEL}\n\n# Brisk\n\n{BRISK}\n")
    (docs / "b.md").write_text("# Kettle Works\n\nKettle Works is a foundry in Brisk. Ivo Marr founded it in 1901.\n")
    db = docs.parent / "store.sqlite"
    assert main(["rag", "ingest", str(docs), "--store", str(db), "--no-vectors"]) == 0
    return str(db)


def ask(capsys, store, *flags, code=0):
    rc = main(["rag", "ask", QUESTION, "--store", store, "--model", "scripted", *flags])
    out, err = capsys.readouterr()
    assert rc == code, err
    return out if code == 0 else err


def test_json_and_text_output(store, capsys):
    got = json.loads(ask(capsys, store, "--json"))
    # --model scripted: the double echoes the first line of its prompt's last message, "Facts:"
    assert got["answer"] == "Facts:" and got["usage"]["calls"] == 1
    text = ask(capsys, store)
    assert not text.startswith("{") and "context (" not in text  # no --show-context: no context printed
    lines = text.splitlines()
    assert lines[0] == "Facts:" and lines[1] == "sources: " + ", ".join(got["cites"])
    assert lines[2] == (f"tokens: context {got['context_tokens']}, prompt {got['usage']['prompt_tokens']}, "
                        f"completion {got['usage']['completion_tokens']}")


def test_k_is_the_number_of_chunks_retrieved(store, capsys):
    assert len(json.loads(ask(capsys, store, "--json"))["retrieved"]) == 2  # both chunks name a mayor
    assert json.loads(ask(capsys, store, "--json", "-k", "1"))["retrieved"] == ["a.md#1"]


def test_retriever_is_the_one_named(store, capsys):
    bm25 = json.loads(ask(capsys, store, "--json", "--retriever", "bm25"))
    assert json.loads(ask(capsys, store, "--json"))["retrieved"] == bm25["retrieved"]  # the default without vectors
    graph = json.loads(ask(capsys, store, "--json", "--retriever", "graph"))
    assert graph["retrieved"] == ["a.md#1"] != bm25["retrieved"]  # followed from Orvel, the entity asked about
    assert "the dense retriever needs an embedder" in ask(capsys, store, "--retriever", "dense", code=1)
    assert "unknown retriever 'nope'" in ask(capsys, store, "--retriever", "nope", code=1)


def test_compressor_and_show_context(store, capsys):
    chunks = ask(capsys, store, "--compressor", "chunks", "--show-context").split("\n\n")
    assert chunks[0].startswith("context (") and chunks[0].endswith(f"tokens):\n[a.md#1] {ORVEL}")
    assert chunks[1] == f"[a.md#2] {BRISK}"
    facts = ask(capsys, store, "--compressor", "triplets", "--show-context").splitlines()
    assert facts[1] == "Orvel: mayor=Ana Toll; is a town; population=8200; founded=1850"
    sentences = ask(capsys, store, "--compressor", "sentences", "--show-context").splitlines()
    assert sentences[1].startswith("[a.md#1] ") and "Orvel's mayor is Ana Toll." in sentences[1]
    assert "unknown compressor 'zip'" in ask(capsys, store, "--compressor", "zip", code=1)


def test_budget_caps_the_context_tokens(store, capsys):
    wide = json.loads(ask(capsys, store, "--json", "--compressor", "chunks"))
    assert wide["context_tokens"] > 40
    # "Orvel: mayor=Ana Toll" is 7 o200k_base tokens (Or|vel|:| mayor|=|Ana| Toll); the next fact does not fit in 8
    out = ask(capsys, store, "--compressor", "triplets", "--budget", "8", "--show-context")
    assert out.splitlines()[:2] == ["context (7 tokens):", "Orvel: mayor=Ana Toll"]
    assert "budget_tokens and k must be >= 1" in ask(capsys, store, "--budget", "0", code=1)


def test_a_budget_nothing_fits_in_is_not_called_no_match(store, capsys):
    # Every sentence with its [a.md#1] tag is longer than 5 tokens: nothing fits, no model call, and the answer
    # says so rather than that nothing matches.
    got = json.loads(ask(capsys, store, "--json", "--compressor", "sentences", "--budget", "5"))
    assert got["retrieved"] and got["context_tokens"] == 0 and got["usage"] is None
    assert got["answer"] == NO_FIT
    none = json.loads(main_json(capsys, store, "Who painted the Zyxqu mural?"))
    assert none["answer"] == NO_MATCH and none["retrieved"] == [] and none["usage"] is None


def main_json(capsys, store, question):
    assert main(["rag", "ask", question, "--store", store, "--model", "scripted", "--json"]) == 0
    return capsys.readouterr().out


def test_the_default_store_is_in_the_tokenomy_cache_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(f"# Orvel\n\n{ORVEL}\n")
    assert main(["rag", "ingest", str(docs), "--no-vectors"]) == 0
    assert f"store {tmp_path / 'cache' / 'rag' / 'store.sqlite'}:" in capsys.readouterr().out
    assert main(["rag", "ask", QUESTION, "--model", "scripted", "--json"]) == 0  # the same store, found again
    assert json.loads(capsys.readouterr().out)["retrieved"] == ["a.md#1"]
