"""Sinks: where a `SpectralReport` goes besides the trainer's loggers.

- `ww_callbacks.sinks.history`: a JSON-lines history file (`HistoryWriter`, `load_history`).
- `ww_callbacks.sinks.wandb`: Weights & Biases per-layer scalars, tables, histograms and ESD images (`WandbSink`).

Each module imports its optional dependency lazily.
"""
