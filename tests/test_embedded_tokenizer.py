"""Converted byte-level tokenizers stay byte-level: some transformers releases convert SmolLM2's GGUF tokenizer with
``byte_fallback`` and a sentencepiece decoder chain, which grammar engines misread (llguidance allowed the newline
after a plan statement, then rejected it). ``repair_tokenizer`` restores the two settings, at conversion and once
for a model converted before."""

from __future__ import annotations

import json
import re

import pytest

from tokenomy.kernels import embedded
from tokenomy.kernels.embedded import repair_tokenizer

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
SP_CHAIN = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                             {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                             BYTE_LEVEL]}


def _tokenizer(pre, decoder, byte_fallback):
    return {"version": "1.0", "pre_tokenizer": pre, "decoder": decoder,
            "model": {"type": "BPE", "byte_fallback": byte_fallback, "vocab": {"Ċ": 0, "Ġa": 1}, "merges": []}}


def _write(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_byte_level_bpe_with_a_sentencepiece_decoder_is_made_byte_level(tmp_path):
    path = _write(tmp_path / "tokenizer.json", _tokenizer({"type": "ByteLevel", "add_prefix_space": False},
                                                          SP_CHAIN, True))
    assert repair_tokenizer(path) is True
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model"]["byte_fallback"] is False and data["decoder"] == BYTE_LEVEL
    assert data["model"]["vocab"] == {"Ċ": 0, "Ġa": 1}  # the vocabulary is kept as it was
    assert repair_tokenizer(path) is False  # once is enough
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("pre, decoder, fallback", [
    # Qwen2's: a Split then ByteLevel, a ByteLevel decoder: right already
    ({"type": "Sequence", "pretokenizers": [{"type": "Split"}, {"type": "ByteLevel"}]}, BYTE_LEVEL, False),
    # a sentencepiece tokenizer (Gemma's): byte fallback is its own, and stays
    ({"type": "Metaspace", "replacement": "▁"}, SP_CHAIN, True),
    (None, SP_CHAIN, True),
])
def test_other_tokenizers_are_left_alone(tmp_path, pre, decoder, fallback):
    data = _tokenizer(pre, decoder, fallback)
    path = _write(tmp_path / "tokenizer.json", data)
    before = path.read_bytes()
    assert repair_tokenizer(path) is False and path.read_bytes() == before


def test_a_model_converted_before_is_repaired_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path))
    target = embedded.converted_dir("smollm2-135m")
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"weights")
    _write(target / "tokenizer.json", _tokenizer({"type": "ByteLevel"}, SP_CHAIN, True))
    marker = target / "tokenomy-embedded.json"
    marker.write_text(json.dumps({"format_version": embedded._FORMAT_VERSION, "dtype": "float32"}))
    assert embedded.ensure_converted(name="smollm2-135m") == target  # complete: no conversion, a repair
    assert json.loads((target / "tokenizer.json").read_text())["decoder"] == BYTE_LEVEL
    assert json.loads(marker.read_text())["tokenizer"] == "checked"
    # Checked once: a later load does not read the tokenizer again.
    _write(target / "tokenizer.json", _tokenizer({"type": "ByteLevel"}, SP_CHAIN, True))
    embedded.ensure_converted(name="smollm2-135m")
    assert json.loads((target / "tokenizer.json").read_text())["decoder"] == SP_CHAIN


@pytest.mark.embedded
def test_the_plan_grammar_accepts_a_plan_token_by_token_on_smollm2(embedded_engine):
    """The tokens of a well-formed plan (spaces, newlines) are each allowed by the mask and then accepted."""
    import torch

    from tokenomy.kernels import Grammar
    from tokenomy.planners.grammar import numbered_for_tools

    tok = embedded_engine.tokenizer
    grammar = Grammar.lark(numbered_for_tools({"search": ["query"], "lookup": ["entity", "attribute"],
                                               "calc": ["expression"]}, max_statements=4))
    constraint = embedded_engine.grammars.constraint(grammar)
    plan = 'e1 = search(query="Halvane Instruments")\ne2 = lookup(entity=e1, attribute="founder")\nanswer(e2)'
    # Each lexeme on its own (a token across two lexemes, '",', is the grammar engine's choice to allow or not).
    pieces = re.findall(r' ?[A-Za-z_]\w*|\d+|"[^"]*"|\n| |.', plan)
    assert "".join(pieces) == plan and "\n" in pieces and " " in pieces
    for token in [t for piece in pieces for t in tok.encode(piece, add_special_tokens=False)]:
        logits = torch.zeros(1, constraint.vocab_size)
        constraint.mask_logits(logits)
        assert torch.isfinite(logits[0, token]), f"{tok.decode([token])!r} masked out"
        constraint.accept(token)
