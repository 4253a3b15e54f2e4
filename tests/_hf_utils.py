"""Tiny random-init Hugging Face models (no download) for the model-directory and sweep tests."""

from __future__ import annotations

from typing import Any


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tiny_gpt2() -> Any:
    """GPT-2, 2 layers of width 64, vocabulary 300 (lm_head tied to wte)."""
    import torch
    import transformers

    _quiet_transformers()
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=300, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    with torch.random.fork_rng(devices=[]):  # seeded without changing the global RNG
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()


def tiny_bert() -> Any:
    """BERT for masked LM, 2 layers of width 64, vocabulary 300 (decoder tied to the word embeddings)."""
    import torch
    import transformers

    _quiet_transformers()
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return transformers.BertForMaskedLM(config).eval()


MODELS = {"gpt2": tiny_gpt2, "bert": tiny_bert}
