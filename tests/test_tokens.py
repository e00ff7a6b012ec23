"""Token counting: OpenAI encodings offline, and the model's own tokenizer after its chat template."""

import copy
import hashlib
import os
import subprocess
import sys

import pytest

from tokenomy.errors import UserError
from tokenomy.kernels import tokens
from tokenomy.kernels.tokens import TokenCounter, count_messages, count_text, counts, tiktoken_encoding

# The OpenAI cookbook's example ("How to count tokens with tiktoken"): 129 prompt tokens for gpt-4-0613
# (cl100k_base) and 124 for gpt-4o (o200k_base), both as the API reported them.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A real fast tokenizer, built here: byte-level BPE over the 256 byte symbols, no merges, ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def test_openai_encodings_load_offline_with_the_published_ids():
    # The ids the OpenAI cookbook and tiktoken's README publish; tiktoken also checked each file's sha256.
    assert tiktoken_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tiktoken_encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert tiktoken_encoding("cl100k_base").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert tiktoken_encoding("o200k_base").encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert tiktoken_encoding("o200k_base") is tiktoken_encoding("o200k_base")


@pytest.mark.parametrize("name,sha256", [
    ("o200k_base", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    ("cl100k_base", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
])
def test_unpacked_files_have_the_published_hash(name, sha256):
    folder = tokens._bpe_dir(name)
    key = hashlib.sha1(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken".encode()).hexdigest()
    assert hashlib.sha256((folder / key).read_bytes()).hexdigest() == sha256


def test_unknown_encoding():
    with pytest.raises(UserError, match="o200k_base"):
        tiktoken_encoding("p50k_base")


@pytest.mark.parametrize("preset", [None, "/somewhere/else"])
def test_tiktoken_cache_dir_is_restored(monkeypatch, preset):
    if preset is None:
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", preset)
    tiktoken_encoding.cache_clear()
    tiktoken_encoding("cl100k_base")
    assert os.environ.get("TIKTOKEN_CACHE_DIR") == preset


@pytest.mark.parametrize("preset", [None, "/somewhere/else"])
def test_tiktoken_cache_dir_is_restored_when_loading_fails(monkeypatch, preset):
    import tiktoken

    if preset is None:
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", preset)

    def boom(name):
        assert os.environ["TIKTOKEN_CACHE_DIR"] != preset
        raise RuntimeError("boom")

    monkeypatch.setattr(tiktoken, "get_encoding", boom)
    tiktoken_encoding.cache_clear()
    with pytest.raises(RuntimeError, match="boom"):
        tiktoken_encoding("cl100k_base")
    assert os.environ.get("TIKTOKEN_CACHE_DIR") == preset
    tiktoken_encoding.cache_clear()


def test_special_token_text_counts_as_text():
    # "<|endoftext|>" as plain text is several ordinary tokens, not the one special token.
    assert count_text("<|endoftext|>") > 1
    assert count_text("a <|endoftext|> b", "cl100k_base") > 3


def test_count_messages_by_hand():
    # "hello world" is 2 tokens and "system"/"user" 1 each in both encodings (ids checked above and below).
    msgs = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}]
    for enc in ("o200k_base", "cl100k_base"):
        assert count_text("system", enc) == count_text("user", enc) == 1
        assert count_messages(msgs, enc) == 3 + (3 + 1 + 2) + (3 + 1 + 2)
        named = [{"role": "user", "content": "hello world", "name": "user"}]
        assert count_messages(named, enc) == 3 + (3 + 1 + 2 + 1 + 1)


def test_count_messages_matches_the_cookbook():
    assert count_messages(COOKBOOK, "cl100k_base") == 129
    assert count_messages(COOKBOOK, "o200k_base") == 124


def test_token_counter_counts_after_the_chat_template(byte_tokenizer):
    tc = TokenCounter(byte_tokenizer)
    assert tc.count("hello") == 5  # one token per byte, no BOS
    assert tc.encode("hi") == byte_tokenizer("hi")["input_ids"]
    assert tc.count([1, 2, 3]) == 3 and tc.encode([7, 8]) == [7, 8]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert byte_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == rendered
    expected = byte_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tc.encode(msgs) == expected
    # By hand: one token per byte of the text between special tokens, plus the 5 special tokens.
    plain = rendered.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert tc.count(msgs) == len(plain.encode()) + 5
    assert tc.count_completion("hi<|im_end|>") == 3
    # A final assistant message is a prefill: continued, not closed, and no new assistant header.
    prefill = msgs + [{"role": "assistant", "content": "Sure"}]
    assert tc.encode(prefill) == expected + byte_tokenizer("Sure", add_special_tokens=False)["input_ids"]


def test_token_counter_rejects_empty_and_template_less(byte_tokenizer):
    with pytest.raises(UserError, match="empty"):
        TokenCounter(byte_tokenizer).count([])
    bare = copy.deepcopy(byte_tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match="template"):
        TokenCounter(bare).count([{"role": "user", "content": "hi"}])


def test_counts(byte_tokenizer):
    msgs = [{"role": "user", "content": "hello world"}]
    c = counts(msgs, byte_tokenizer)
    assert c == {"model": TokenCounter(byte_tokenizer).count(msgs), "o200k_base": 3 + 3 + 1 + 2,
                 "cl100k_base": 3 + 3 + 1 + 2}
    assert counts("hello world") == {"model": None, "o200k_base": 2, "cl100k_base": 2}
    assert counts("hello", byte_tokenizer)["model"] == 5


def test_import_does_not_pull_torch_or_transformers():
    code = ("import sys, tokenomy.kernels.tokens; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
