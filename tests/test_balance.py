"""Balancing (`ww_callbacks.balance`): the papers' rules recomputed from their formulas, and the factors applied at
every optimizer step on top of the user's optimizer and scheduler, in real Lightning and Hugging Face runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ww_callbacks  # noqa: E402
from ww_callbacks.balance import AlphaDecay, TempBalance, hill_alpha, map_scores  # noqa: E402
from ww_callbacks.balance.optim import FactorHooks, batchnorm_followers  # noqa: E402
from ww_callbacks.engine import WatchOptions  # noqa: E402


def cnn(seed: int = 0) -> nn.Module:
    """conv (too few eigenvalues, and first) - BN - conv - BN - conv - linear - linear (last)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3), nn.Flatten(),
            nn.Linear(16 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip


def reference_alphas(model: nn.Module, min_evals: int = 50) -> dict[str, float]:
    """The papers' alpha, written from their formulas: Conv2d/Linear in module order minus the first and the last,
    eigenvalues = squared singular values (a Conv2d's kernel positions pooled, scaled by sqrt(0.5)), at least
    ``min_evals`` of them, the Hill estimator with xmin at the median."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:-1]
    out = {}
    for name, module in layers:
        w = module.weight.detach().double().numpy()
        slices = (w.reshape(*w.shape[:2], -1) * math.sqrt(0.5)).transpose(2, 0, 1) if w.ndim == 4 else w[None]
        eigs = np.sort((np.linalg.svd(slices, compute_uv=False) ** 2).ravel())
        if len(eigs) < min_evals:
            continue
        i = len(eigs) // 2
        n = len(eigs) - i
        out[name] = 1 + n / (np.sum(np.log(eigs[i:])) - n * np.log(eigs[i]))
    return out


def reference_factors(alphas: dict[str, float], low: float, high: float) -> dict[str, float]:
    values = list(alphas.values())
    return {k: float(np.interp(a, [min(values), max(values)], [low, high])) for k, a in alphas.items()}


# ------------------------------------------------------------------------------------------------ the rules
def test_temp_balance_is_the_papers_rule():
    model = cnn()
    with torch.no_grad():  # spread the layers' alphas
        model[3].weight.copy_(torch.from_numpy(np.random.default_rng(1).standard_t(3, size=(16, 8, 3, 3))))
    alphas = reference_alphas(model)
    assert sorted(alphas) == ["3", "6", "8"]  # "0": first (and 9 eigenvalues); "10": last
    factors = TempBalance().factors(ww_callbacks.analyze(model, randomize=False))
    expected = reference_factors(alphas, 0.5, 1.5)
    assert factors.keys() == expected.keys()
    for name, value in expected.items():
        assert factors[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert min(factors.values()) == 0.5 and max(factors.values()) == 1.5


def test_the_other_maps_grouping_and_the_analysis_alpha():
    scores = [2.0, 3.5, 5.0, 3.0]
    assert map_scores(scores, 0.5, 1.5, "tb_sqrt") == pytest.approx(
        list(np.sqrt(scores) / np.sum(np.sqrt(scores)) * 4)
    )
    assert map_scores(scores, 0.5, 1.5, "tb_log2") == pytest.approx(
        list(np.log2(scores) / np.sum(np.log2(scores)) * 4)
    )
    assert map_scores(scores, 0.5, 1.5, "tb_step") == [0.5, 1.0, 1.25, 0.75]  # rank r of n: 0.5 + r / n
    rng = np.random.default_rng(0)
    weights = {
        f"block{b}.{kind}.weight": rng.standard_t(df, size=(120, 80))
        for b in range(3)
        for kind, df in (("q_proj", 2.5), ("v_proj", 8.0))
    }
    report = ww_callbacks.analyze(weights, randomize=False)
    grouped = AlphaDecay(skip_first=False, skip_last=False).factors(report)
    assert {grouped[f"block{b}.q_proj"] for b in range(3)} == {0.6666}  # heavier tails: weaker decay
    assert {grouped[f"block{b}.v_proj"] for b in range(3)} == {3.0}
    by_alpha = TempBalance(estimator="alpha", skip_first=False, skip_last=False).factors(report)
    fitted = {lr.longname: lr.alpha for lr in report.layers}
    assert by_alpha == reference_factors(fitted, 0.5, 1.5)
    assert hill_alpha(np.zeros(10)) != hill_alpha(np.zeros(10))  # NaN: no factor for an all-zero layer


def test_rules_check_their_options():
    with pytest.raises(ValueError, match="unknown map"):
        TempBalance(map="cubic")
    with pytest.raises(ValueError, match="low <= high"):
        TempBalance(low=2.0, high=1.0)
    with pytest.raises(ValueError, match="one rule per hyperparameter"):
        WatchOptions(balance=[TempBalance(), TempBalance()])
    with pytest.raises(TypeError, match="balance takes"):
        WatchOptions(balance="tempbalance")


def test_a_batchnorm_follows_the_conv_before_it():
    assert batchnorm_followers(cnn()) == {"1": "0", "4": "3"}


# ------------------------------------------------------------------------------------------------ the optimizer
SCHEDULERS = {
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12),
    "chained": lambda opt: torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
        ]
    ),
}
OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4),
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=True),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True),
}


def _record(optimizer, names):
    """Each step's (lr, weight_decay) per parameter name, as the optimizer uses them (a pre-hook after ours)."""
    steps = []

    def hook(opt, args, kwargs):
        steps.append(
            {
                names[id(p)]: (float(g["lr"]), float(g["weight_decay"]))
                for g in opt.param_groups
                for p in g["params"]
            }
        )

    optimizer.register_step_pre_hook(hook)
    return steps


def _run(optimizer_name, scheduler_name, factors):
    model = cnn()
    # two param groups, as users often have (no weight decay on biases and norms)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
    optimizer = OPTIMIZERS[optimizer_name]([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
    scheduler = SCHEDULERS[scheduler_name](optimizer)
    hooks = FactorHooks(model, [optimizer], lambda: factors, followers=batchnorm_followers(model)).install()
    steps = _record(optimizer, {id(p): n for n, p in model.named_parameters()})
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(8, 1, 12, 12, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    hooks.remove()
    return steps, optimizer, model


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_step_uses_factor_times_the_users_schedule(optimizer, scheduler):
    factors = {"lr": {"3": 0.5, "8": 1.5}, "weight_decay": {"3": 3.0, "6": 0.6666}}
    plain, _, _ = _run(optimizer, scheduler, {})
    balanced, opt, model = _run(optimizer, scheduler, factors)
    lr_of = {"3.": 0.5, "4.": 0.5, "8.": 1.5}  # "4" is the BatchNorm after conv "3"
    wd_of = {"3.": 3.0, "4.": 3.0, "6.": 0.6666}
    for before, after in zip(plain, balanced, strict=True):
        for name, (lr, wd) in before.items():
            prefix = name.split(".")[0] + "."
            assert after[name][0] == pytest.approx(lr * lr_of.get(prefix, 1.0), rel=1e-12), (name, lr)
            assert after[name][1] == pytest.approx(wd * wd_of.get(prefix, 1.0), rel=1e-12), (name, wd)
    # the user's groups are back between steps, with their state kept per parameter
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p in opt.state and opt.state[p] for p in model.parameters())


# ------------------------------------------------------------------------------------------------ Lightning
def _lightning_fit(tmp_path, balance, optimizer, scheduler, epochs=3, ckpt_path=None, callbacks=()):
    pl = pytest.importorskip("lightning.pytorch")
    from ww_callbacks.lightning import WeightWatcherCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = cnn()

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = optimizer(self.parameters())
            return [opt], [scheduler(opt)]

        def train_dataloader(self):
            gen = torch.Generator().manual_seed(0)
            x, y = torch.randn(64, 1, 12, 12, generator=gen), torch.randint(0, 10, (64,), generator=gen)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    class Recorder(pl.Callback):  # after ours: sees the weights it analyzed, and each step's hyperparameters
        def __init__(self) -> None:
            self.steps, self.weights = [], []

        def on_train_start(self, trainer, module):
            names = {id(p): n.removeprefix("net.") for n, p in module.named_parameters()}
            self.steps = _record(trainer.optimizers[0], names)

        def on_train_epoch_end(self, trainer, module):
            self.weights.append({k: v.clone() for k, v in module.net.state_dict().items()})

    ww = WeightWatcherCallback(seed=0, balance=balance, per_layer=True, history_path=tmp_path / "h.jsonl")
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[ww, recorder, *callbacks], default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(callbacks),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trainer.fit(Module(), ckpt_path=ckpt_path)
    return ww, recorder, trainer


def _expected_factors(weights, rule):
    model = cnn()
    model.load_state_dict(weights)
    # (AlphaDecay groups by the last part of a layer's name: in this Sequential every layer is a kind of its own)
    return reference_factors(reference_alphas(model), rule.low, rule.high)


@pytest.mark.parametrize(
    ("rule", "optimizer", "scheduler", "column"),
    [
        (
            TempBalance(),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3),
            0,
        ),
        (
            AlphaDecay(),
            lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
            1,
        ),
    ],
    ids=["tempbalance-sgd-cosine", "alphadecay-adamw"],
)
def test_lightning_steps_use_the_factors_of_the_last_analysis(tmp_path, rule, optimizer, scheduler, column):
    _, plain, _ = _lightning_fit(tmp_path / "plain", None, optimizer, scheduler)
    ww, balanced, trainer = _lightning_fit(tmp_path / "balanced", rule, optimizer, scheduler)
    per_epoch = len(plain.steps) // 3
    assert per_epoch == 4 and len(balanced.steps) == 12
    for step, (before, after) in enumerate(zip(plain.steps, balanced.steps, strict=True)):
        epoch = step // per_epoch
        expected = {} if epoch == 0 else _expected_factors(balanced.weights[epoch - 1], rule)
        follows = {"4": "3"}  # the BatchNorm after conv 3
        for name, values in before.items():
            layer = name.split(".")[0]
            factor = expected.get(follows.get(layer, layer), 1.0)  # first ("0"), last ("10"), norms: 1
            assert after[name][column] == pytest.approx(values[column] * factor, rel=1e-6), (step, name)
            assert after[name][1 - column] == pytest.approx(values[1 - column], rel=1e-12), (step, name)
    # logged, in the history, and kept in the callback's state
    key = rule.column
    assert float(trainer.callback_metrics[f"ww/{key}/max"]) == pytest.approx(rule.high)
    rows = ww_callbacks.load_history(tmp_path / "balanced" / "h.jsonl", as_pandas=False)
    assert {r["layer"] for r in rows if r[key] is not None and not math.isnan(r[key])} == {
        "net.3",
        "net.6",
        "net.8",
    }
    assert ww.state_dict()["factors"][rule.hyperparameter].keys() == {"net.3", "net.6", "net.8"}


def test_a_resumed_lightning_fit_continues_with_the_saved_factors(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    optimizer = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    scheduler = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4)  # noqa: E731
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    ww, full, _ = _lightning_fit(
        tmp_path / "a", TempBalance(), optimizer, scheduler, epochs=2, callbacks=[saver]
    )
    saved = ww.engine.state.factors
    ckpt = sorted((tmp_path / "ckpt").glob("epoch=1*.ckpt"))[0]
    ww2, resumed, _ = _lightning_fit(
        tmp_path / "b", TempBalance(), optimizer, scheduler, epochs=3, ckpt_path=ckpt
    )
    # the first resumed step (epoch 2) already uses the factors saved after epoch 1's analysis
    first = resumed.steps[0]  # layer "0" (the first) keeps the scheduled rate
    assert first["3.weight"][0] == pytest.approx(first["0.weight"][0] * saved["lr"]["net.3"], rel=1e-9)
    assert first["8.weight"][0] == pytest.approx(first["0.weight"][0] * saved["lr"]["net.8"], rel=1e-9)
    assert ww2.engine.state.factors["lr"].keys() == saved["lr"].keys()


def test_keras_refuses_balance_at_construction():
    pytest.importorskip("keras")
    from ww_callbacks.keras import WeightWatcherCallback

    with pytest.raises(
        ValueError, match="not available with ww_callbacks.keras.WeightWatcherCallback: its optimizers"
    ):
        WeightWatcherCallback(balance=TempBalance())


# ------------------------------------------------------------------------------------------------ Hugging Face
class TokenMLP(nn.Module):
    """A small language model of Linear layers (the Trainer needs nothing else): embedding, 3 x Linear(64, 64),
    Linear(64, vocabulary); returns the loss with the labels."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = nn.Embedding(64, 64)
            self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(3))
            self.head = nn.Linear(64, 64)

    def forward(self, input_ids, labels=None, attention_mask=None):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        logits = self.head(x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


def _trainer_fit(tmp_path, balance, resume=None, **overrides):
    pytest.importorskip("transformers")
    from _hf_trainer_utils import TokenData, training_args
    from transformers import Trainer, TrainerCallback

    from ww_callbacks.balance.optim import unwrap_optimizer
    from ww_callbacks.transformers import WeightWatcherCallback

    class Recorder(TrainerCallback):  # after ours: each step's hyperparameters, the weights at each analysis
        def __init__(self) -> None:
            self.steps, self.weights = [], {}

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            names = {id(p): n for n, p in model.named_parameters()}
            self.steps = _record(unwrap_optimizer(optimizer), names)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.weights[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}

    ww = WeightWatcherCallback(every_n_steps=2, seed=0, balance=balance, history_path=False)
    recorder = Recorder()
    args = training_args(tmp_path, warmup_steps=3, lr_scheduler_type="linear", weight_decay=0.01, **overrides)
    trainer = Trainer(model=TokenMLP(), args=args, train_dataset=TokenData(), callbacks=[ww, recorder])
    with torch.random.fork_rng(devices=[]):
        trainer.train(resume_from_checkpoint=resume)
    return ww, recorder


def test_hf_trainer_steps_use_the_factors_of_the_last_analysis(tmp_path):
    rule = TempBalance(min_evals=50)
    _, plain = _trainer_fit(tmp_path / "plain", None)
    ww, balanced = _trainer_fit(tmp_path / "balanced", rule)
    assert len(plain.steps) == len(balanced.steps) == 8
    for index, (before, after) in enumerate(zip(plain.steps, balanced.steps, strict=True)):
        step = index + 1  # this optimizer step; the last analysis was after step 2k < step
        last = 2 * ((step - 1) // 2)
        expected = {}
        if last:
            model = TokenMLP()
            model.load_state_dict(balanced.weights[last])
            expected = reference_factors(reference_alphas(model), 0.5, 1.5)
        assert not last or sorted(expected) == ["layers.1", "layers.2"]  # layers.0: first, head: last
        for name, (lr, wd) in before.items():
            factor = expected.get(name.rsplit(".", 1)[0], 1.0)
            assert after[name][0] == pytest.approx(lr * factor, rel=1e-6), (step, name)
            assert after[name][1] == wd, (step, name)
    assert ww.history[-1]["step"] == 8 and ww.engine.state.factors["lr"].keys() == {"layers.1", "layers.2"}


def test_hf_trainer_resumes_with_the_saved_factors(tmp_path):
    ww, _ = _trainer_fit(tmp_path, TempBalance(), save_strategy="steps", save_steps=4, max_steps=4)
    saved = ww.engine.state.factors["lr"]
    _, resumed = _trainer_fit(tmp_path, TempBalance(), resume=str(tmp_path / "checkpoint-4"))
    first = resumed.steps[0]  # step 5: the factors of the analysis after step 4, from trainer_state.json
    base = first["layers.0.weight"][0]
    for layer, factor in saved.items():
        assert first[f"{layer}.weight"][0] == pytest.approx(base * factor, rel=1e-9)


def test_the_history_plot_draws_the_factors(tmp_path):
    pytest.importorskip("matplotlib")
    from ww_callbacks.engine import SpectralMonitor
    from ww_callbacks.plots import plot_history

    monitor = SpectralMonitor(seed=0, balance=[TempBalance(), AlphaDecay()], randomize=False)
    monitor.open_sinks(history_path=tmp_path / "h.jsonl")
    for epoch in range(3):
        with torch.no_grad():
            cnn_model = cnn(epoch)
        monitor.run(cnn_model, epoch=epoch, step=epoch)
    monitor.close_sinks()
    rows = ww_callbacks.load_history(tmp_path / "h.jsonl", as_pandas=False)
    labels = [ax.get_ylabel() for ax in plot_history(rows).axes]
    assert "lr_factor" in labels and "wd_factor" in labels
    assert "lr_factor" not in [ax.get_ylabel() for ax in plot_history(rows, metrics=["alpha"]).axes]
