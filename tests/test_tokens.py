"""Token counting: OpenAI encodings offline, and the model's own tokenizer after its chat template."""

import os
import subprocess
import sys

import pytest

from tokenomy.errors import UserError
from tokenomy.kernels.tokens import TokenCounter, count_messages, count_text, counts, tiktoken_encoding


def test_openai_encodings_load_offline_with_the_published_ids():
    # tiktoken checks each file's published sha256, so a wrong file would not load at all.
    assert tiktoken_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tiktoken_encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert tiktoken_encoding("o200k_base").n_vocab > 199_000


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


def test_special_token_text_counts_as_text():
    assert count_text("a <|endoftext|> b") > 3


def test_count_messages_follows_the_cookbook():
    msgs = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hi", "name": "bob"}]
    role = lambda s: count_text(s)  # noqa: E731
    expected = 3 + (3 + role("system") + 2) + (3 + role("user") + role("hi") + role("bob") + 1)
    assert count_messages(msgs) == expected


def test_token_counter_uses_the_chat_template(tiny_tokenizer):
    tc = TokenCounter(tiny_tokenizer)
    assert tc.count("the") == len(tiny_tokenizer("the")["input_ids"])
    assert tc.count([1, 2, 3]) == 3
    msgs = [{"role": "user", "content": "hi"}]
    rendered = tiny_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tc.count(msgs) == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert tc.count_completion("hi") == 2
    c = counts(msgs, tiny_tokenizer)
    assert c["model"] == tc.count(msgs) and c["o200k_base"] == count_messages(msgs)
    assert counts("hello world")["cl100k_base"] == 2 and counts("x")["model"] is None


def test_import_does_not_pull_torch():
    code = "import sys, tokenomy.kernels.tokens; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
