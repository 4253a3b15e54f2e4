"""Sinks: where a `SpectralReport` goes besides the trainer's loggers.

- `ww_callbacks.sinks.history`: a JSON-lines history file (`HistoryWriter`, `load_history`).
- `ww_callbacks.sinks.wandb`: Weights & Biases per-layer scalars, tables, histograms and ESD images (`WandbSink`).
- `ww_callbacks.sinks.lifecycle`: the sinks of one training run (`RunSinks`: open, emit, close) and the choices
  the callbacks share (what W&B gets from the sink, the verbose line).

Each module imports its optional dependency lazily.
"""
