"""The engine's schedules and background analysis, without a framework: `make_schedule`, `BackgroundWorker`,
`SpectralMonitor(background=True)` against the synchronous engine."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ww_callbacks.engine import SpectralMonitor, StepSchedule
from ww_callbacks.engine.background import BackgroundWorker
from ww_callbacks.engine.schedule import EpochSchedule, make_schedule, rng_for
from ww_callbacks.stopping import StopDecision, StoppingRule

#: History keys that are timings or counters, not numbers of the analysis.
NOT_NUMBERS = ("elapsed", "background_waits")


class SlowRule(StoppingRule):
    """Never stops; sleeps in `check` so that an analysis (in the worker: record included) takes a while."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def check(self, report, *, epoch):
        time.sleep(self.seconds)
        return StopDecision(False, "")


class GateRule(StoppingRule):
    """Never stops; its check sets ``entered`` and waits for ``release``: the test decides when an analysis (in
    the worker: the rule runs inside the record, under the state's lock) ends, whatever the machine's load."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def check(self, report, *, epoch):
        self.entered.set()
        assert self.release.wait(120), "the test never released the analysis"
        return StopDecision(False, "")


def once(condition, action) -> threading.Thread:
    """Run ``action`` on a helper thread as soon as ``condition()`` holds (checked every 10 ms, for at most 120 s)."""

    def watch() -> None:
        ready = threading.Event()
        for _ in range(12000):
            if condition():
                break
            ready.wait(0.01)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def numbers(history):
    return [{k: v for k, v in entry.items() if k not in NOT_NUMBERS} for entry in history]


def weights(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"fc1.weight": rng.standard_t(4, size=(120, 80)), "fc2.weight": rng.normal(size=(60, 120))}


def analysis_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ww-callbacks-analysis"]


def test_make_schedule_one_of_epochs_or_steps():
    assert make_schedule(None, None) == EpochSchedule(1)
    assert make_schedule(3, None) == EpochSchedule(3)
    assert make_schedule(None, 50) == StepSchedule(50)
    with pytest.raises(ValueError, match="set one of every_n_epochs=1 / every_n_train_steps=5, not both"):
        make_schedule(1, 5, steps_name="every_n_train_steps")


def test_rng_position_is_the_epoch_or_the_step():
    # Epoch schedules keep their numbers: (seed, epoch), as before step schedules existed.
    assert SpectralMonitor(seed=4).rng_for(2, 999).random() == rng_for(4, 2).random()
    on_steps = SpectralMonitor(seed=4, schedule=StepSchedule(10))
    assert on_steps.rng_for(0, 30).random() == rng_for(4, 30).random()
    with pytest.raises(ValueError, match="needs the step"):
        on_steps.rng_for(0)


@pytest.mark.parametrize("schedule", [None, StepSchedule(5)], ids=["epochs", "steps"])
def test_background_gives_exactly_the_synchronous_numbers(schedule):
    sync = SpectralMonitor(seed=11, schedule=schedule, per_layer=True)
    background = SpectralMonitor(seed=11, schedule=schedule, per_layer=True, background=True)
    sync_metrics = []
    for i in range(4):
        sync_metrics.append(sync.run(weights(i), epoch=i, step=5 * (i + 1)).metrics)
        arrays = weights(i)
        assert background.background.submit(arrays, epoch=i, step=5 * (i + 1))
        for array in arrays.values():  # training goes on: the worker analyzes the copy made at submit
            array[:] = 0.0
    assert background.background.finish(timeout=60)
    results = background.background.collect()
    assert [r.metrics for r in results] == sync_metrics
    assert [(r.epoch, r.step) for r in results] == [(i, 5 * (i + 1)) for i in range(4)]
    assert numbers(background.history) == numbers(sync.history)
    np.testing.assert_equal(background.last_report.to_rows(), sync.last_report.to_rows())  # NaN == NaN
    assert not analysis_threads()


def test_busy_worker_makes_the_next_snapshot_wait_and_counts_it():
    rule = GateRule()
    monitor = SpectralMonitor(seed=0, background=True, early_stopping=rule, max_pending=1)
    bg = monitor.background
    bg.submit(weights(0), epoch=0)
    assert rule.entered.wait(60)  # the first analysis is in its rule: the next submit has to wait for it
    helper = once(lambda: bg.worker.waits == 1, rule.release.set)
    bg.submit(weights(1), epoch=1)
    helper.join(60)
    assert bg.finish(timeout=60)
    assert bg.worker.waits == 1 and bg.worker.wait_time > 0
    assert [entry["background_waits"] for entry in monitor.history] == [1, 1]
    assert [r.epoch for r in bg.collect()] == [0, 1]  # nothing skipped
    assert not analysis_threads()


def test_finish_after_an_interrupt_drops_queued_work_and_keeps_what_finished():
    rule = GateRule()
    monitor = SpectralMonitor(seed=0, background=True, early_stopping=rule, max_pending=3)
    bg = monitor.background
    for epoch in range(3):
        bg.submit(weights(epoch), epoch=epoch)
    assert rule.entered.wait(60)  # the first is running (held in its rule), two are queued
    helper = once(lambda: bg.pending == 1, rule.release.set)  # released once the queue is dropped
    with pytest.warns(RuntimeWarning, match="2 queued analyses dropped"):
        assert bg.finish(interrupted=True)
    helper.join(60)
    assert [entry["epoch"] for entry in monitor.history] == [0]
    assert not analysis_threads()


def test_finish_abandons_a_stuck_analysis_after_the_timeout_with_a_warning():
    rule = GateRule()
    monitor = SpectralMonitor(seed=0, background=True, early_stopping=rule)
    monitor.background.submit(weights(0), epoch=0)
    assert rule.entered.wait(60)
    with pytest.warns(RuntimeWarning, match="abandoned after 0.2 s"):
        assert not monitor.background.finish(timeout=0.2)  # the analysis is still held in its rule
    thread = analysis_threads()[0]
    assert thread.daemon  # an abandoned analysis never keeps the process alive
    rule.release.set()
    thread.join(60)
    assert [entry["epoch"] for entry in monitor.history] == [0]  # it still completed and was recorded


def test_worker_thread_exits_when_idle_and_restarts_on_demand():
    worker = BackgroundWorker(max_pending=2)
    out: list[int] = []
    for i in range(3):
        worker.submit(lambda i=i: out.append(i))
        assert worker.wait_idle(timeout=5)
        assert not worker.alive
    assert out == [0, 1, 2]
    with pytest.raises(ValueError, match="max_pending"):
        BackgroundWorker(max_pending=0)


def test_state_dict_while_the_worker_records():
    rule = GateRule()
    monitor = SpectralMonitor(seed=0, background=True, early_stopping=rule)
    monitor.background.submit(weights(0), epoch=0)
    assert rule.entered.wait(60)  # the worker is recording (its rule runs under the state's lock)
    states = []
    reader = threading.Thread(target=lambda: states.append(monitor.state_dict()))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and not states  # state_dict waits for the record in progress ...
    rule.release.set()
    reader.join(60)
    assert len(states[0]["history"]) == 1  # ... and never sees half an entry
    assert monitor.background.finish(timeout=60)
