"""Results files of a scan, ``.jsonl`` or ``.parquet``: one row per image with the fields of
``verify --json``, written as the scan goes, so a rerun knows which images are done.

- ``.jsonl``: rows are appended and flushed batch by batch; a line cut short by a crash is
  dropped on the next run.
- ``.parquet``: batches go to ``RESULTS.parquet.parts/`` (each part written whole, then
  renamed); ``close`` merges the file and the parts into one ``RESULTS.parquet``, sorted by path.
  Parquet needs pyarrow (the ``scale`` extra).

``RESULTS.settings.json`` beside it records how the rows were made (inversion, iterations, DDIM
steps, alpha, search, key ids), so a rerun with other settings does not mix its rows in.

A file that holds other things than ringmark rows is never overwritten without ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import typing
import uuid
from dataclasses import fields
from pathlib import Path

from ..verifier import Result

FORMATS = (".jsonl", ".parquet")
FIELDS = [f.name for f in fields(Result)]
SETTINGS = ("inversion", "ddim_steps", "exact", "alpha", "keys_tested")  # what every row of one scan shares


class ResultsError(Exception):
    """The results file cannot be used (one-line message)."""


def arrow_schema():
    """The pyarrow schema of a row, from ``Result``'s annotations."""
    import pyarrow as pa

    types = {str: pa.string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64(),
             list[float]: pa.list_(pa.float64())}  # a clip's frame_p_values
    hints = typing.get_type_hints(Result)
    return pa.schema([(name, types[next(t for t in typing.get_args(hints[name]) or (hints[name],)
                                        if t is not type(None))]) for name in FIELDS])


class ResultsFile:
    """``path`` (.jsonl or .parquet), opened to add rows. ``force``: start over, deleting what is there."""

    def __init__(self, path: str | os.PathLike, force: bool = False):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise ResultsError(f"{self.path}: the results file must end in .jsonl or .parquet")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.settings_file = self.path.with_name(self.path.name + ".settings.json")
        if self.path.is_dir():
            raise ResultsError(f"{self.path}: is a folder")
        if force:
            self.path.unlink(missing_ok=True)
            self.settings_file.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        try:  # fail now, not after the scan: where the rows will go must be writable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == ".jsonl":
                open(self.path, "a").close()
            else:
                self.parts.mkdir(exist_ok=True)
        except OSError as e:
            raise ResultsError(f"{self.path}: cannot write here ({e.strerror or e})") from None

    def rows(self) -> list[dict]:
        """The rows already stored (and, for .jsonl, a last line cut short is cut off the file)."""
        return self._jsonl_rows() if self.format == ".jsonl" else self._parquet_rows()

    def _jsonl_rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a crash in the middle of a line: drop that line
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        rows = []
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "path" not in row:
                raise ResultsError(f"{self.path}: line {n} is not a ringmark result; use --force to overwrite it")
            rows.append(row)
        return rows

    def _parquet_rows(self) -> list[dict]:
        import pyarrow.parquet as pq

        files = ([self.path] if self.path.exists() else []) + sorted(self.parts.glob("*.parquet"))
        rows = []
        for f in files:
            try:
                table = pq.read_table(f)
            except Exception as e:  # pyarrow raises several types for files that are not parquet
                raise ResultsError(f"{f}: not a parquet file ({str(e).splitlines()[0]}); use --force to overwrite it")
            if "path" not in table.column_names:
                raise ResultsError(f"{f}: not a ringmark results file; use --force to overwrite it")
            rows.extend(table.to_pylist())
        return rows

    def check_settings(self, settings: dict, rows: list[dict]) -> None:
        """Refuse to add rows made with other ``settings`` (JSON values) than the rows there:
        they are kept in RESULTS.settings.json beside the file; a file without one (or rows
        from elsewhere) is judged by what its first row records (``SETTINGS``)."""
        if self.settings_file.exists():
            try:
                saved = json.loads(self.settings_file.read_text())
            except (OSError, json.JSONDecodeError):
                raise ResultsError(f"{self.settings_file}: unreadable; use --force to start over") from None
            differ = [k for k in settings if saved.get(k) != settings[k]]
            if differ:
                raise ResultsError(f"{self.path}: written with other {', '.join(differ)}; rerun with those, or "
                                   f"use --force to start over")
            return
        for row in rows[:1]:
            if any(row.get(k) != settings.get(k) for k in SETTINGS):
                was = ", ".join(f"{k} {row.get(k)}" for k in SETTINGS)
                raise ResultsError(f"{self.path}: written with other settings ({was}); rerun with those, or use "
                                   f"--force to start over")
        self.settings_file.write_text(json.dumps(settings) + "\n")

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.format == ".jsonl":
            with open(self.path, "a") as f:
                f.write("".join(json.dumps({k: row[k] for k in FIELDS}) + "\n" for row in rows))
                f.flush()
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"{uuid.uuid4().hex}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), self.parts / f".{name}.tmp")
        os.replace(self.parts / f".{name}.tmp", self.parts / name)

    def close(self) -> None:
        """Parquet: merge the file and its parts into one file, sorted by path."""
        if self.format != ".parquet" or not self.parts.exists():
            return
        if not any(self.parts.iterdir()) and self.path.exists():  # nothing new
            self.parts.rmdir()
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        # by path, once each: a crash after the merge and before the parts were removed left
        # both, the same rows twice
        rows = sorted({r["path"]: r for r in reversed(self._parquet_rows())}.values(), key=lambda r: r["path"])
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), tmp)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)
