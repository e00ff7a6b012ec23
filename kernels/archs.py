"""Real architectures with random weights: speed is measured on the shapes of real models without downloading any
(vLLM's ``load_format="dummy"``), and fast paths are checked against the plain path on the same random weights.

``ARCHS`` holds the published hyperparameters of a few models (their ``config.json`` fields); ``arch_config``
turns one into a transformers config (with overrides, say fewer layers for a test), and
``TransformersEngine.dummy`` builds an engine on it with ``byte_tokenizer``, a real fast tokenizer over the 256
byte values and ChatML (prompts are usually token ids here; ids it does not know decode to nothing).
"""

from __future__ import annotations

from typing import Any

from tokenomy.errors import UserError

__all__ = ["ARCHS", "arch_config", "byte_tokenizer"]

ARCHS: dict[str, dict[str, Any]] = {
    # Qwen/Qwen2.5-1.5B-Instruct
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
    },
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama-3-8b": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
    },
}


def arch_config(name: str, **overrides: Any) -> Any:
    """The transformers config of architecture ``name`` (a key of ``ARCHS``), with ``overrides`` applied.

    Raises:
        UserError: an unknown architecture.
    """
    from transformers import AutoConfig

    if name not in ARCHS:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}")
    fields = {**ARCHS[name], **overrides}
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def byte_tokenizer() -> Any:
    """A fast tokenizer over the 256 byte values (byte-level BPE, a few merges) with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token=None)
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast
