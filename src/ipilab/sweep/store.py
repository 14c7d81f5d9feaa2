"""The results table of a sweep, kept so that an interruption loses at most the runs in flight.

While a sweep runs, each finished run is written at once as its own small Parquet file in the folder
`RESULTS.parquet.parts/` (written beside it and renamed into place, so a part is whole or absent). When
the sweep ends, or is interrupted with Ctrl-C, the rows of RESULTS.parquet and of every part are merged
into a new RESULTS.parquet (renamed into place) and the parts are removed. After a hard kill the parts
stay; `--resume` (and `ipilab report`) read them with the table. A run's row is keyed by `run_id`; when
the same run appears twice (a part left behind after a merge), the newer row wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ipilab.files import published


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _write(table: pa.Table, path: Path) -> None:
    with published(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive")


class StoreError(ValueError):
    """A file that is not a readable results table of a sweep; the message names it."""


def _read(path: Path) -> pa.Table:
    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: not a readable Parquet table ({e})") from None
    if not {"run_id", "run_index", "seed", "error"} <= set(t.column_names):
        raise StoreError(f"{path}: not a results table of `ipilab sweep` (no run_id, run_index, seed, error columns)")
    return t


class ResultStore:
    """RESULTS.parquet and its parts folder."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.parts = parts_dir(self.out)

    def exists(self) -> bool:
        return self.out.exists() or self.parts.exists()

    def add(self, row: dict[str, Any]) -> None:
        """One finished run, on disk before this returns."""
        self.parts.mkdir(exist_ok=True)
        _write(pa.Table.from_pylist([row]), self.parts / f"{row['run_id']}.parquet")

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted((p for p in self.parts.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime_ns)

    def read(self) -> pa.Table | None:
        """Every run recorded so far, one row per run_id, in grid order (None if there is none). Raises
        StoreError for a file that is not such a table."""
        tables = []
        if self.out.exists():
            tables.append(_read(self.out))
        tables += [_read(p) for p in self._part_files()]
        if not tables:
            return None
        t = _concat(tables)
        # Newest row per run_id: the last occurrence in table order (parts after the table, by age).
        ids = t.column("run_id").to_pylist()
        last = {rid: i for i, rid in enumerate(ids)}
        t = t.take(sorted(last.values()))
        return t.sort_by([("run_index", "ascending"), ("run_id", "ascending")])

    def merge(self) -> pa.Table | None:
        """Rewrite RESULTS.parquet with every row and drop the parts it now holds."""
        merged_parts = self._part_files()
        t = self.read()
        if t is None:
            return None
        _write(t, self.out)
        for p in merged_parts:
            p.unlink(missing_ok=True)
        if self.parts.is_dir():
            for p in self.parts.glob(".*"):  # a part half-written when a sweep was killed
                p.unlink(missing_ok=True)
            if not any(self.parts.iterdir()):
                self.parts.rmdir()
        return t

    def done(self) -> dict[str, bool]:
        """run_id -> whether that run succeeded, for every recorded run."""
        t = self.read()
        if t is None:
            return {}
        return {rid: err is None for rid, err in zip(t.column("run_id").to_pylist(), t.column("error").to_pylist(),
                                                      strict=True)}
