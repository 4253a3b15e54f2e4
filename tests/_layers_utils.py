"""Small, seeded models for tests, and helpers to compare snapshots with weightwatcher 0.7.7.

Every torch builder seeds a forked torch RNG (the global one is left alone); the Keras builders take their
weights from a torch twin, so both frameworks hold the same numbers. Keras is imported only by the Keras
builders. Import what you need: ``from _layers_utils import mnist_mlp, small_cnn``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mnist_mlp(seed: int = 0) -> nn.Module:
    """The MNIST MLP 784-64-64-10 (input flattened inside)."""
    with _seeded(seed):
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


class SmallCNN(nn.Module):
    """Conv2d 1->6 5x5 (fewer channels than taps), 3x3/1x1/2x2 convs with out > in and out < in, then a head.

    Input (B, 1, 28, 28).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)  # out + in < kh + kw: weightwatcher's channel-mismatch branch
        self.conv2 = nn.Conv2d(6, 16, 3)  # out > in
        self.conv3 = nn.Conv2d(16, 32, 1)  # 1x1, out > in
        self.conv4 = nn.Conv2d(32, 16, 3)  # out < in, odd rf
        self.conv5 = nn.Conv2d(16, 8, 2)  # out < in, even rf: N/M label quirk
        self.conv6 = nn.Conv2d(8, 16, 2)  # out > in, even rf
        self.conv7 = nn.Conv2d(16, 12, 1)  # 1x1, out < in
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6, self.conv7):
            x = self.act(conv(x))
        return self.head(self.pool(x).flatten(1))


def small_cnn(seed: int = 0) -> nn.Module:
    with _seeded(seed):
        return SmallCNN()


class EmbeddingModel(nn.Module):
    """Embedding(200, 24) -> mean over tokens -> Linear(24, 10). Input: (B, T) token ids < 200."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(200, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))


def embedding_model(seed: int = 0) -> nn.Module:
    with _seeded(seed):
        return EmbeddingModel()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """A randomly initialized 2-layer GPT-2 LM (vocab 128, width 32); ``lm_head`` is tied to ``wte``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=128,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    with _seeded(seed):
        return GPT2LMHeadModel(config)


def small_linear(seed: int = 0) -> nn.Module:
    """A Linear(300, 12): 12 eigenvalues (weightwatcher's small-N power-law path)."""
    with _seeded(seed):
        return nn.Sequential(nn.Linear(300, 12), nn.ReLU(), nn.Linear(12, 10))


class AttentionMix(nn.Module):
    """MultiheadAttention (packed and separate q/k/v), LayerNorm, BatchNorm, and a head. Input (B, T, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.cross = nn.MultiheadAttention(32, 4, kdim=16, vdim=24, batch_first=True)
        self.bn = nn.BatchNorm1d(32)
        self.key_proj = nn.Linear(32, 16)
        self.value_proj = nn.Linear(32, 24)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        x = x + self.cross(x, self.key_proj(x), self.value_proj(x), need_weights=False)[0]
        return self.head(self.bn(x.mean(dim=1)))


def attention_mix(seed: int = 0) -> nn.Module:
    with _seeded(seed):
        return AttentionMix()


def narrow_linear(seed: int = 0) -> nn.Module:
    """A Linear with M = 5 < 8 eigenvalues (weightwatcher skips it) between two normal ones."""
    with _seeded(seed):
        return nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 5), nn.Linear(5, 20))


def huge_linear(seed: int = 0) -> nn.Module:
    """A Linear(10, 50001): N > 50000 (weightwatcher's max_N skips it), after a normal one."""
    with _seeded(seed):
        return nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 50001))


#: Every torch builder, by name (the weightwatcher parity tests run over all of them).
TORCH_MODELS = {
    "mlp": mnist_mlp,
    "cnn": small_cnn,
    "embedding": embedding_model,
    "gpt2": tiny_gpt2,
    "small_linear": small_linear,
    "attention": attention_mix,
    "narrow_linear": narrow_linear,
    "huge_linear": huge_linear,
}


# ---------------------------------------------------------------------------------------------------------
# Keras twins: the same weights in Keras layouts (Linear (out, in) <-> Dense (in, out); Conv2d
# (out, in, kh, kw) <-> Conv2D (kh, kw, in, out); Conv1d (out, in, k) <-> Conv1D (k, in, out))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def keras_twin_of_cnn(model: SmallCNN) -> Any:
    """A Keras functional model computing what `SmallCNN` computes, on (B, 28, 28, 1) inputs."""
    import keras

    x = inputs = keras.Input((28, 28, 1))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7"):
        conv = getattr(model, name)
        layer = keras.layers.Conv2D(conv.out_channels, conv.kernel_size, activation="relu", name=name)
        x = layer(x)
        layer.set_weights([_np(conv.weight).transpose(2, 3, 1, 0), _np(conv.bias)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(model.head.out_features, name="head")
    outputs = head(x)
    head.set_weights([_np(model.head.weight).T, _np(model.head.bias)])
    return keras.Model(inputs, outputs, name="cnn")


def keras_twin_of_embedding(model: EmbeddingModel) -> Any:
    """A Keras model computing what `EmbeddingModel` computes, on (B, T) token ids."""
    import keras

    inputs = keras.Input((None,), dtype="int32")
    embed = keras.layers.Embedding(model.embed.num_embeddings, model.embed.embedding_dim, name="embed")
    x = keras.layers.GlobalAveragePooling1D()(embed(inputs))
    head = keras.layers.Dense(model.head.out_features, name="head")
    outputs = head(x)
    embed.set_weights([_np(model.embed.weight)])
    head.set_weights([_np(model.head.weight).T, _np(model.head.bias)])
    return keras.Model(inputs, outputs, name="embedding")


def conv1d_pair(seed: int = 0) -> tuple[nn.Module, Any]:
    """A torch Conv1d stack and its Keras twin (channels last), 16 -> 8 (k=3) -> 24 (k=5)."""
    import keras

    with _seeded(seed):
        torch_model = nn.Sequential(nn.Conv1d(16, 8, 3), nn.ReLU(), nn.Conv1d(8, 24, 5))
    inputs = keras.Input((40, 16))
    x = inputs
    for index, conv in ((0, torch_model[0]), (2, torch_model[2])):
        activation = "relu" if index == 0 else None
        layer = keras.layers.Conv1D(
            conv.out_channels, conv.kernel_size[0], activation=activation, name=f"c{index}"
        )
        x = layer(x)
        layer.set_weights([_np(conv.weight).transpose(2, 1, 0), _np(conv.bias)])
    return torch_model, keras.Model(inputs, x)


# ---------------------------------------------------------------------------------------------------------
# weightwatcher 0.7.7 as the reference


def ww_describe(model: Any) -> Any:
    """weightwatcher's ``describe()`` DataFrame, its stdout silenced (conftest hides the GPU first)."""
    return _Watcher(model).describe()


class _Watcher:
    """A ``weightwatcher.WeightWatcher`` on one model, with its stdout silenced."""

    def __init__(self, model: Any) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints while importing, too
            import weightwatcher as ww

            self.watcher = ww.WeightWatcher(model=model)

    def esd(self, layer_id: int) -> np.ndarray:
        """weightwatcher's sorted ESD of one layer (``get_ESD`` does not apply the conv factor 1/2)."""
        with contextlib.redirect_stdout(io.StringIO()):
            return np.asarray(self.watcher.get_ESD(layer=layer_id), dtype=np.float64)

    def describe(self) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return self.watcher.describe()


def ww_watcher(model: Any) -> _Watcher:
    """weightwatcher on ``model`` (conftest hides the GPU before it is imported)."""
    return _Watcher(model)


def ww_filter(
    layers: list[Any], *, min_evals: int = 8, max_evals: int = 15000, max_N: int = 50000
) -> list[Any]:
    """weightwatcher's default supported-layer filter, applied to our `LayerWeights`."""
    return [lw for lw in layers if min_evals <= lw.M * lw.rf <= max_evals and lw.N <= max_N]


def eigenvalues(layer: Any) -> np.ndarray:
    """Sorted eigenvalues of ``scale * slice`` over all slices of a `LayerWeights`, in float64 numpy."""
    mats = layer.matrices
    if isinstance(mats, torch.Tensor):
        mats = mats.detach().cpu().double().numpy()
    mats = np.asarray(mats, dtype=np.float64) * layer.scale
    sv = np.linalg.svd(mats, compute_uv=False)
    return np.sort((sv**2).ravel())
