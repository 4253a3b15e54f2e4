"""Read an offline W&B run back from its ``run-<id>.wandb`` file, for tests.

The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic 0xBEE1 little-endian, version 0), then
32 KiB blocks of chunks. Each chunk has a 7-byte header (CRC-32, length, type) followed by its data; a record
too long for the rest of a block is split into FIRST, MIDDLE..., LAST chunks, a record that fits is one FULL
chunk, and fewer than 7 bytes left in a block are zero padding. wandb 0.31 checksums ``type byte + data`` with
plain (IEEE, zlib) CRC-32, unmasked; LevelDB itself uses masked CRC-32C, which is accepted too. Each record is a
serialized ``wandb.proto.wandb_internal_pb2.Record``.

Written for these tests from the format description; it shares no code with wandb.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptRunFile(ValueError):
    """The .wandb file does not follow the expected framing."""


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _checksum_ok(expected: int, chunk_type: int, data: bytes) -> bool:
    payload = bytes([chunk_type]) + data
    if zlib.crc32(payload) & 0xFFFFFFFF == expected:
        return True
    return _masked(_crc32c(payload)) == expected


def iter_payloads(path: str | Path, chunk_counts: Counter[int] | None = None) -> Iterator[bytes]:
    """Yield the raw record payloads of a .wandb file, checking the header, checksums and chunk order.

    ``chunk_counts``, when given, counts the chunks seen by type (FULL, FIRST, MIDDLE, LAST).
    """
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER.size:
        raise CorruptRunFile(f"{path}: too short for a W&B header")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC or version != 0:
        raise CorruptRunFile(f"{path}: bad header {ident!r} {magic:#x} v{version}")
    pos = FILE_HEADER.size
    pending: bytearray | None = None
    while pos < len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += left_in_block
            continue
        if pos + CHUNK_HEADER.size > len(data):
            break  # a header cut short at the end of the file (run still writing)
        checksum, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
        if chunk_type == 0 and length == 0 and checksum == 0:  # preallocated zeros: end of the written part
            break
        start = pos + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            break  # record cut short at the end of the file
        if length > left_in_block - CHUNK_HEADER.size:
            raise CorruptRunFile(f"{path}@{pos}: chunk of {length} bytes crosses a block boundary")
        if not _checksum_ok(checksum, chunk_type, chunk):
            raise CorruptRunFile(f"{path}@{pos}: checksum mismatch")
        pos = start + length
        if chunk_counts is not None:
            chunk_counts[chunk_type] += 1
        if chunk_type == FULL:
            if pending is not None:
                raise CorruptRunFile(f"{path}@{pos}: FULL chunk inside a split record")
            yield bytes(chunk)
        elif chunk_type == FIRST:
            if pending is not None:
                raise CorruptRunFile(f"{path}@{pos}: FIRST chunk inside a split record")
            pending = bytearray(chunk)
        elif chunk_type in (MIDDLE, LAST):
            if pending is None:
                raise CorruptRunFile(f"{path}@{pos}: {chunk_type} chunk without a FIRST")
            pending += chunk
            if chunk_type == LAST:
                yield bytes(pending)
                pending = None
        else:
            raise CorruptRunFile(f"{path}@{pos}: unknown chunk type {chunk_type}")


def iter_records(path: str | Path, chunk_counts: Counter[int] | None = None) -> Iterator[Any]:
    """Yield the ``Record`` protobufs of a .wandb file."""
    from wandb.proto import wandb_internal_pb2

    for payload in iter_payloads(path, chunk_counts):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _set_item(target: dict[str, Any], item: Any) -> None:
    """Put one HistoryItem / SummaryItem into ``target`` (nested keys become nested dicts)."""
    keys = list(item.nested_key) or [item.key]
    value = json.loads(item.value_json) if item.value_json else None
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


@dataclass
class OfflineRun:
    """What an offline run wrote: history rows, summary, define_metric records, and its files folder."""

    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    record_types: list[str] = field(default_factory=list)
    chunk_counts: Counter[int] = field(default_factory=Counter)

    @property
    def files_dir(self) -> Path:
        return self.path.parent / "files"

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """History rows that contain ``key``."""
        return [row for row in self.history if key in row]

    def values(self, key: str) -> list[Any]:
        return [row[key] for row in self.rows_with(key)]

    def load_table(self, value: dict[str, Any]) -> dict[str, Any]:
        """The JSON of a logged ``wandb.Table`` (the history value points to a file under files/)."""
        assert value.get("_type") == "table-file", value
        return json.loads((self.files_dir / value["path"]).read_text())

    def media_path(self, value: dict[str, Any]) -> Path:
        """The file behind a logged image (history value of ``_type`` image-file)."""
        return self.files_dir / value["path"]

    def metric(self, name: str) -> dict[str, Any] | None:
        """The last define_metric record for ``name`` (exact name or glob)."""
        found = None
        for m in self.metrics:
            if m.get("name") == name or m.get("glob_name") == name:
                found = m
        return found


def read_run(where: str | Path, *, timeout: float = 180.0) -> OfflineRun:
    """Read the single ``run-*.wandb`` file found under ``where`` (a file, a run folder or a wandb ``dir``).

    ``run.finish()`` can return before W&B's service process has written the last records, so this waits
    (up to ``timeout`` seconds) until the file holds the run's ``exit`` record.
    """
    where = Path(where)
    deadline = time.monotonic() + timeout
    while True:
        found = [where] if where.is_file() else sorted(where.rglob("run-*.wandb"))
        if len(found) > 1:
            raise FileNotFoundError(
                f"expected one run-*.wandb under {where}, found {[str(p) for p in found]}"
            )
        run = _parse_run(found[0]) if found else None
        if run is not None and "exit" in run.record_types:
            return run
        if time.monotonic() > deadline:
            state = "no run-*.wandb file" if run is None else f"last records {run.record_types[-3:]}"
            raise TimeoutError(f"{where}: no complete offline run after {timeout}s ({state})")
        time.sleep(0.1)


def _parse_run(path: Path) -> OfflineRun:
    from google.protobuf.json_format import MessageToDict

    run = OfflineRun(path=path)
    for record in iter_records(path, run.chunk_counts):
        kind = record.WhichOneof("record_type")
        run.record_types.append(kind)
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_item(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_item(run.summary, item)
            for item in record.summary.remove:
                run.summary.pop((list(item.nested_key) or [item.key])[0], None)
        elif kind == "metric":
            run.metrics.append(MessageToDict(record.metric, preserving_proto_field_name=True))
    return run
