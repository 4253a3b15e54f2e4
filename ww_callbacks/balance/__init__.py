"""Acting on the spectra: per-layer learning rates (TempBalance) and weight decays (AlphaDecay) from alpha.

The rules (`TempBalance`, `AlphaDecay`, ``rules.py``) are framework-free: a spectral report in, per-layer factors
out. The callbacks take them as ``balance=`` (one rule or a list) and apply the factors of the latest analysis
around every optimizer step (``optim.py``), keeping the user's optimizer, param groups and scheduler.

Example::

    from ww_callbacks.balance import AlphaDecay, TempBalance
    from ww_callbacks.lightning import WeightWatcherCallback

    trainer = Trainer(callbacks=[WeightWatcherCallback(balance=[TempBalance(), AlphaDecay()])])
"""

from .rules import MAPS, AlphaDecay, BalanceRule, TempBalance, hill_alpha, map_scores

__all__ = ["MAPS", "AlphaDecay", "BalanceRule", "TempBalance", "hill_alpha", "map_scores"]
