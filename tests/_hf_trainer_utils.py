"""Tiny random-init BERT and GPT-2 models and synthetic token data for the Hugging Face Trainer tests."""

from __future__ import annotations

from typing import Any

import torch

VOCAB, SEQ = 64, 16


class TokenData(torch.utils.data.Dataset):
    """``n`` random token sequences (labels = the inputs: language modelling); fixed by ``seed``."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": self.ids[i],
        }


def tiny_bert() -> Any:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
    )
    return BertForMaskedLM(config)


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=SEQ)
    return GPT2LMHeadModel(config)


def training_args(output_dir: Any, **overrides: Any) -> Any:
    """Quiet, CPU-only, deterministic arguments: 8 steps of batch 8, no checkpoints, no integrations."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "max_steps": 8,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)
