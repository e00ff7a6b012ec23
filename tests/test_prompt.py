"""Prompt layout: static to dynamic, and generated ids carried forward so every turn extends the last."""

import pytest

from tokenomy.errors import UserError
from tokenomy.kernels.prompt import ChatTranscript, PromptBuilder, Rank


def test_builder_orders_static_to_dynamic_whatever_the_call_order(tiny_tokenizer):
    a = PromptBuilder(tiny_tokenizer).turn("Q?").role("agent 1").tools([{"name": "b"}, {"name": "a"}]).system("S")
    b = PromptBuilder(tiny_tokenizer).system("S").tools([{"name": "a"}, {"name": "b"}]).role("agent 1").turn("Q?")
    assert a.build() == b.build()
    text = tiny_tokenizer.decode(a.build())
    assert text.index("Tools:") < text.index("S") < text.index("agent 1") < text.index("Q?")
    assert '{"name":"a"}\n{"name":"b"}' in text  # canonical, sorted


def test_segments_are_tokenized_separately(tiny_tokenizer):
    ids = PromptBuilder(tiny_tokenizer).add("t", Rank.SYSTEM).add("he", Rank.TURN).build()
    assert ids == tiny_tokenizer("t")["input_ids"] + tiny_tokenizer("he")["input_ids"]


def test_transcript_turns_extend_each_other(tiny_engine_factory, tiny_tokenizer):
    engine = tiny_engine_factory()
    t = ChatTranscript(tiny_tokenizer, [{"role": "system", "content": "You help."}])
    t.add("user", "first question")
    previous = None
    for turn in range(3):
        prompt = t.ids()
        rendered = tiny_tokenizer.apply_chat_template(t.messages, tokenize=False, add_generation_prompt=True)
        assert tiny_tokenizer.decode(prompt) == rendered
        c = engine.generate(prompt, max_tokens=6)
        if previous is not None:
            prev_prompt, prev_gen = previous
            assert prompt[: len(prev_prompt) + len(prev_gen)] == prev_prompt + prev_gen
            assert c.usage.cached_prompt_tokens == len(prev_prompt) + len(prev_gen) - 1
        previous = (prompt, c.token_ids)
        t.add_reply(c).add("user", f"follow-up {turn}")


def test_transcript_needs_a_chat_template(tiny_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(UserError):
        ChatTranscript(NoTemplate())


@pytest.mark.embedded
def test_transcript_on_the_embedded_model_reuses_every_turn(embedded_engine):
    t = ChatTranscript(embedded_engine.tokenizer)
    t.add("user", "Name a fruit.")
    c1 = embedded_engine.generate(p1 := t.ids(), max_tokens=12)
    t.add_reply(c1).add("user", "And a vegetable?")
    p2 = t.ids()
    assert p2[: len(p1) + len(c1.token_ids)] == p1 + c1.token_ids
    c2 = embedded_engine.generate(p2, max_tokens=12)
    assert c2.usage.cached_prompt_tokens == len(p1) + len(c1.token_ids) - 1
