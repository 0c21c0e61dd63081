"""Tiny models and tokenizers built from configs, for the offline demo, tests and benchmarks.

No hub access is needed: a word-level tokenizer is trained on the given texts and a small GPT-2,
Llama, GPT-NeoX or mixture-of-experts (Mixtral, Qwen2-MoE) model is initialised from a config with a fixed seed.
"""

from __future__ import annotations

import torch

ARCHS = ("gpt2", "llama", "gpt_neox", "mixtral", "qwen2_moe")


def train_tokenizer(texts: list[str]):
    """A lower-cased word-level tokenizer (with [PAD]/[UNK]/[BOS]) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]"]))
    bos = tok.token_to_id("[BOS]")
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[BOS]"
    )


def tiny_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2,
                bias: bool = True, max_positions: int = 128):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MixtralConfig, Qwen2MoeConfig

    common = dict(vocab_size=vocab_size, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max_positions, attention_bias=bias, mlp_bias=bias,
                           tie_word_embeddings=False, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, max_position_embeddings=max_positions,
                             attention_bias=bias, use_parallel_residual=True, rotary_pct=0.5,
                             hidden_dropout=0.0, attention_dropout=0.0, **common)
    moe = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
               max_position_embeddings=max_positions, tie_word_embeddings=False, num_experts_per_tok=2, **common)
    if arch == "mixtral":
        return MixtralConfig(intermediate_size=2 * hidden, num_local_experts=4, **moe)
    if arch == "qwen2_moe":  # routed experts plus a gated shared expert
        return Qwen2MoeConfig(intermediate_size=2 * hidden, moe_intermediate_size=hidden, num_experts=4,
                              shared_expert_intermediate_size=2 * hidden, qkv_bias=bias, **moe)
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


def tiny_model(arch: str, vocab_size: int, seed: int = 0, dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, **kw))
    return model.to(dtype).eval()


def save_tiny(path: str, arch: str, texts: list[str], seed: int = 0, **kw) -> str:
    """Write a tokenizer trained on `texts` and a fresh tiny model to a Hugging Face folder."""
    tok = train_tokenizer(texts)
    model = tiny_model(arch, len(tok), seed=seed, **kw)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
