"""Shared test setup: quiet, offline, headless, CPU only."""

from __future__ import annotations

import os

# Before any framework import: no GPU, no network, no windows.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
# Tiny models train faster on one thread, and DDP tests run two processes on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
