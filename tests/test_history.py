"""HistoryWriter / load_history / summarize_history: the JSON-lines history of analyses."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
from _sinks_utils import LAYERS, same, training_like_reports

import ww_callbacks
from ww_callbacks import LayerResult, SpectralReport
from ww_callbacks.sinks.history import HistoryWriter, load_history, read_history_rows, summarize_history


@pytest.fixture(scope="module")
def reports() -> list[SpectralReport]:
    return training_like_reports(4)


def _write(path, reports, epochs, **kwargs):
    with HistoryWriter(path, **kwargs) as writer:
        for epoch in epochs:
            writer.write(reports[epoch], epoch=epoch, step=100 * (epoch + 1))


def test_round_trip_every_column(tmp_path, reports):
    path = tmp_path / "logs" / "ww_history.jsonl"  # parent folder does not exist yet
    _write(path, reports, [0, 1])
    rows = load_history(path, as_pandas=False)
    assert len(rows) == 2 * len(LAYERS)
    for row in rows:
        report = reports[row["epoch"]]
        assert row["step"] == 100 * (row["epoch"] + 1)
        expected = report[row["layer"]].to_row()
        assert set(expected) <= set(row)
        for key, value in expected.items():
            assert same(row[key], value), (row["layer"], key, row[key], value)
    assert [r["layer"] for r in rows[:3]] == list(LAYERS)
    # One line per layer per epoch, each a standalone JSON object starting with epoch, step, layer.
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    assert list(json.loads(lines[0]))[:3] == ["epoch", "step", "layer"]


def test_nan_written_as_null_and_read_back_as_nan(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    layer = LayerResult(layer_id=0, name="odd", longname="odd", layer_type="dense", N=4, M=2)
    layer.alpha = 3.0
    layer.log_alpha_norm = math.inf  # JSON has no infinity either
    odd = SpectralReport(layers=[layer])
    with HistoryWriter(path) as writer:
        writer.write(reports[0], epoch=0, step=1)
        writer.write(odd, epoch=1, step=2)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    head = json.loads(text.splitlines()[2])
    assert head["layer"] == "head" and head["status"] == "failed" and head["alpha"] is None
    rows = load_history(path, as_pandas=False)
    assert math.isnan(rows[2]["alpha"])
    assert rows[3]["alpha"] == 3.0 and math.isnan(rows[3]["log_alpha_norm"]) and math.isnan(rows[3]["D"])
    df = load_history(path, as_pandas=True)
    assert df["alpha"].isna().tolist() == [False, False, True, False]


def test_resume_appends_and_append_false_starts_over(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    _write(path, reports, [0, 1])
    _write(path, reports, [2, 3])  # a resumed run: a new writer, same file
    assert sorted({r["epoch"] for r in load_history(path, as_pandas=False)}) == [0, 1, 2, 3]
    _write(path, reports, [3], append=False)
    assert {r["epoch"] for r in load_history(path, as_pandas=False)} == {3}


def test_resume_from_older_checkpoint_keeps_newest_lines(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    _write(path, reports, [0, 1, 2])
    # Resumed from the epoch-0 checkpoint: epoch 1 is analyzed again (at the same step) and comes out different.
    with HistoryWriter(path) as writer:
        writer.write(reports[3], epoch=1, step=200)
        writer.write(reports[3], epoch=2, step=250)  # a step schedule: a second analysis within epoch 2
    rows = load_history(path, as_pandas=False)
    assert [(r["epoch"], r["step"]) for r in rows][::3] == [(0, 100), (1, 200), (2, 250), (2, 300)]
    epoch1 = [r for r in rows if r["epoch"] == 1]
    assert all(r["step"] == 200 for r in epoch1)
    assert [r["layer"] for r in epoch1] == list(LAYERS)
    assert same(epoch1[0]["alpha"], reports[3]["encoder.fc1"].alpha)
    assert len(load_history(path, as_pandas=False, dedupe=False)) == 15
    # the top-level function is the same function, dedupe included
    assert len(ww_callbacks.load_history(path, as_pandas=False, dedupe=False)) == 15
    assert ww_callbacks.load_history(path, as_pandas=False) == rows


def test_several_analyses_in_one_epoch_are_all_kept(tmp_path, reports):
    # A step schedule (the Hugging Face callback's every_n_steps) analyzes several times per epoch.
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as writer:
        for step in (30, 10, 20):
            writer.write(reports[step // 10], epoch=0, step=step)
        writer.write(reports[0], epoch=0, step=20)  # a resumed run re-analyzes step 20: the newer line wins
    rows = load_history(path, as_pandas=False)
    assert [r["step"] for r in rows] == [10] * 3 + [20] * 3 + [30] * 3
    assert same(rows[3]["alpha"], reports[0]["encoder.fc1"].alpha)
    summaries = summarize_history(rows)
    assert [(s["epoch"], s["step"]) for s in summaries] == [(0, 10), (0, 20), (0, 30)]
    assert same(summaries[0]["alpha"], reports[1].summary["alpha"])


def test_truncated_last_line_is_skipped_and_cut_before_appending(tmp_path, reports, caplog):
    path = tmp_path / "h.jsonl"
    _write(path, reports, [0, 1])
    full = path.read_text()
    last_line = full.splitlines()[-1]
    with open(path, "a") as f:  # a crash in the middle of the next write
        f.write(last_line[: len(last_line) // 2])
    assert len(read_history_rows(path)) == 6
    assert "incomplete last line" in caplog.text
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        _write(path, reports, [2])
    assert path.read_text().startswith(full)
    assert path.read_text().count("\n") == 9
    assert [r["epoch"] for r in load_history(path, as_pandas=False)] == [0] * 3 + [1] * 3 + [2] * 3


def test_corrupt_line_in_the_middle_is_an_error(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    _write(path, reports, [0])
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(1, "this is not json\n")
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"h\.jsonl:2"):
        load_history(path)
    path.write_text('{"alpha": 3}\n')
    with pytest.raises(ValueError, match="not a history line"):
        load_history(path)


def test_one_write_and_fsync_per_analysis(tmp_path, reports, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "h.jsonl"
    writer = HistoryWriter(path)
    assert not path.exists()  # nothing is created before the first write
    writer.write(reports[0], epoch=0, step=1)
    # Right after write returns, the whole epoch is on disk and every line is complete.
    assert path.read_text().count("\n") == len(LAYERS)
    writer.write(reports[1], epoch=1, step=2)
    writer.write(SpectralReport(), epoch=2, step=3)  # no layers: no lines, no sync
    writer.close()
    assert len(synced) == 2


def test_load_history_as_pandas_and_package_entry_point(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    _write(path, reports, [0, 1])
    df = ww_callbacks.load_history(path)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns[:3]) == ["epoch", "step", "layer"]
    assert len(df) == 6
    as_list = load_history(path, as_pandas=False)
    assert df["alpha"].tolist() == pytest.approx([r["alpha"] for r in as_list], nan_ok=True)


def test_summarize_history_matches_report_summary(tmp_path, reports):
    path = tmp_path / "h.jsonl"
    _write(path, reports, range(4))
    for source in (load_history(path, as_pandas=False), load_history(path, as_pandas=True)):
        summaries = summarize_history(source)
        assert [s["epoch"] for s in summaries] == [0, 1, 2, 3]
        for summary, report in zip(summaries, reports, strict=True):
            assert summary["num_layers"] == 3
            assert summary["num_summarized"] == report.num_summarized == 2
            for metric, value in report.summary.items():
                assert summary[metric] == pytest.approx(value, rel=1e-12), metric
            assert math.isnan(summary["mp_softrank"])  # mp_fit was off: no value
