"""The generation log: one row per image ``embed`` makes, in a real database, so that ``verify``
can ask "did our model generate this content under this key?" (docs/concepts/threats.md).

    log = GenerationLog.open("generations.sqlite")        # a path: SQLite (the default)
    log = GenerationLog.open("postgresql://host/ringmark")  # a URL: any SQLAlchemy database
    log.add([Generation(...)]); log.by_key(key_id)

A row holds what was generated and how (image id, key id, model, seed, prompt, steps, guidance,
time, the PNG's SHA-256, its content fingerprint, the C2PA manifest signed into it when
``embed --c2pa`` ran: ``io.credentials``), never key material. SQLAlchemy Core writes the
same SQL for both; SQLite runs in WAL mode with a busy timeout, so several ``embed`` processes
append to one file at once and no row is lost (tests/test_genlog.py, with processes). Key ids
and hashes are indexed.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

FORMATS = (".jsonl", ".parquet")
ENV = "RINGMARK_LOG"  # embed's and verify's --log when the option is not given


class LogError(Exception):
    """The generation log cannot be used (one-line message)."""


@dataclass(frozen=True, kw_only=True)
class Generation:
    """One logged image. ``fingerprint``: the content fingerprint (``provenance.fingerprint``), a
    float16 vector; ``fingerprint_kind`` names how it was made, so that only like is compared."""

    image_id: str
    key_id: str | None
    model: str
    seed: int
    prompt: str
    steps: int
    guidance: float | None
    created: str  # ISO 8601, UTC
    file: str
    sha256: str
    fingerprint: np.ndarray | None = None
    fingerprint_kind: str | None = None
    c2pa: bytes | None = None  # the manifest store signed into the PNG (``embed --c2pa``)

    def record(self) -> dict:
        """The row as plain JSON types (the fingerprint as a list, the manifest in base64)."""
        out = asdict(self)
        out["fingerprint"] = None if self.fingerprint is None else [float(v) for v in self.fingerprint]
        out["c2pa"] = None if self.c2pa is None else base64.b64encode(self.c2pa).decode()
        return out

    @classmethod
    def from_record(cls, row: dict) -> "Generation":
        names = {f.name for f in fields(cls)}
        unknown = set(row) - names
        if unknown:
            raise LogError(f"unknown fields in a log row: {sorted(unknown)}")
        fp, manifest = row.get("fingerprint"), row.get("c2pa")
        return cls(**{**row, "fingerprint": None if fp is None else np.asarray(fp, np.float16),
                      "c2pa": None if manifest is None else base64.b64decode(manifest, validate=True)})


def _table(metadata):
    from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, String, Table, Text

    return Table(
        "generations", metadata,
        Column("row", Integer, primary_key=True, autoincrement=True),  # the order rows were logged in
        Column("image_id", String(64), nullable=False, unique=True),
        Column("key_id", String(64)),
        Column("model", Text, nullable=False),
        Column("seed", BigInteger, nullable=False),
        Column("prompt", Text, nullable=False),
        Column("steps", Integer, nullable=False),
        Column("guidance", Float),
        Column("created", String(32), nullable=False),
        Column("file", Text, nullable=False),
        Column("sha256", String(64), nullable=False, index=True),
        Column("fingerprint", LargeBinary),
        Column("fingerprint_kind", String(64)),
        Column("c2pa", LargeBinary),
        Index("ix_generations_key_row", "key_id", "row"),  # a key's generations, in the order logged
    )


def database_url(where: str | os.PathLike) -> str:
    """A SQLAlchemy URL for ``where``: a URL as it is (``postgresql://`` uses psycopg 3), a path as
    a SQLite file."""
    text = str(where)
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().resolve())
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def located(where: str | os.PathLike | None) -> str | None:
    """``where`` as every process of a cluster can open it (a path made absolute), after checking
    that the log is there (LogError)."""
    if where is None:
        return None
    GenerationLog.open(where, create=False)
    return str(where) if "://" in str(where) else str(Path(where).expanduser().resolve())


def redacted(where: str | os.PathLike) -> str:
    """``where`` without a password, for messages."""
    text = str(where)
    if "://" in text and "@" in text.split("://", 1)[1]:
        scheme, rest = text.split("://", 1)
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}://{user}:***@{rest.split('@', 1)[1]}"
    return text


class GenerationLog:
    """A generation log in a database (``open``)."""

    def __init__(self, engine, where: str):
        from sqlalchemy import MetaData

        self.engine, self.where = engine, where
        self.metadata = MetaData()
        self.table = _table(self.metadata)

    @classmethod
    def open(cls, where: str | os.PathLike, create: bool = True) -> "GenerationLog":
        """The log at ``where`` (a path: SQLite; a URL: that database), its table made if missing
        (``create``; else a missing SQLite file is an error)."""
        try:
            from sqlalchemy import create_engine, event
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:
            raise LogError("the generation log needs SQLAlchemy (a dependency of ringmark): pip install sqlalchemy") from None
        url = database_url(where)
        path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
        new = path is not None and not path.exists()
        if path is not None:
            if not create and new:
                raise LogError(f"{where}: no such generation log")
            if path.exists() and path.is_dir():
                raise LogError(f"{where}: is a folder, not a generation log")
            path.parent.mkdir(parents=True, exist_ok=True)
            if new:  # which key made which image, and the prompts: the owner's alone (SQLite gives its
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # -wal and -shm the file's mode)
        try:
            engine = create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
        except ImportError as e:
            extra = " (pip install 'ringmark[postgres]')" if url.startswith("postgresql") else ""
            raise LogError(f"{redacted(where)}: the database driver is missing: {_first_line(e)}{extra}") from None
        except (SQLAlchemyError, ValueError) as e:
            raise LogError(f"{redacted(where)}: cannot open the generation log ({_first_line(e)})") from None
        if url.startswith("sqlite"):
            @event.listens_for(engine, "connect")
            def _wal(connection, _record):  # concurrent writers: WAL, and wait for the lock rather than fail
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=60000")
                cursor.close()

        log = cls(engine, str(where))
        try:
            log.metadata.create_all(engine)
            log._add_missing_columns()
        except SQLAlchemyError as e:
            raise LogError(f"{redacted(where)}: not a usable generation log ({_first_line(e)})") from None
        return log

    def _add_missing_columns(self) -> None:
        """A log made by an older ringmark gains the columns added since (nullable: its rows keep
        None there)."""
        from sqlalchemy import inspect, text

        present = {c["name"] for c in inspect(self.engine).get_columns(self.table.name)}
        with self.engine.begin() as conn:
            for column in self.table.c:
                if column.name not in present:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.execute(text(f'ALTER TABLE {self.table.name} ADD COLUMN "{column.name}" {kind}'))

    def close(self) -> None:
        """Close the database connections (a SQLite file can then be removed)."""
        self.engine.dispose()

    def add(self, rows: Iterable[Generation]) -> int:
        """Append ``rows`` in one transaction; an image id already logged is an error (LogError)."""
        from sqlalchemy.exc import IntegrityError

        values = [_to_db(r) for r in rows]
        if not values:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), values)
        except IntegrityError:
            raise LogError(f"{redacted(self.where)}: an image id of these rows is already logged") from None
        return len(values)

    def get(self, image_id: str) -> Generation | None:
        """The generation logged as ``image_id``, or None."""
        return next(iter(self._select(self.table.c.image_id == image_id)), None)

    def has_manifest(self, image_id: str) -> bool:
        """Whether the generation ``image_id`` was logged with its signed C2PA manifest (the bytes
        are not read)."""
        from sqlalchemy import select

        c = self.table.c
        with self.engine.connect() as conn:
            return conn.execute(select(c.image_id).where((c.image_id == image_id) & c.c2pa.is_not(None))).first() is not None

    def manifest(self, image_id: str) -> bytes | None:
        """The C2PA manifest store signed into the generation ``image_id`` (``embed --c2pa``), or None."""
        from sqlalchemy import select

        c = self.table.c
        with self.engine.connect() as conn:
            value = conn.execute(select(c.c2pa).where(c.image_id == image_id)).scalar_one_or_none()
        return None if value is None else bytes(value)

    def by_key(self, key_id: str) -> list[Generation]:
        """The generations logged under ``key_id`` (an indexed lookup)."""
        return list(self._select(self.table.c.key_id == key_id))

    def fingerprints(self, key_id: str, kind: str) -> tuple[list[tuple[str, str, int]], np.ndarray]:
        """The generations logged under ``key_id`` with a ``kind`` fingerprint, lean: their (image id,
        time, seed) and their fingerprints (m, d) float32, for ``provenance.check``."""
        c = self.table.c
        rows = self._lean((c.key_id == key_id) & (c.fingerprint_kind == kind), [c.image_id, c.created, c.seed])
        return [(r[0], r[1], int(r[2])) for r in rows], _matrix([r[3] for r in rows])

    def unrelated(self, model: str, key_id: str, kind: str, n: int) -> np.ndarray:
        """The ``kind`` fingerprints (<= n, d) of up to ``n`` generations of ``model`` not under
        ``key_id`` (clean controls included): the most recent, so a check is repeatable while the
        log stands still."""
        from sqlalchemy import or_

        c = self.table.c
        where = (c.model == model) & (c.fingerprint_kind == kind) & or_(c.key_id.is_(None), c.key_id != key_id)
        return _matrix([r[0] for r in self._lean(where, [], n, newest=True)])

    def _lean(self, where, columns: list, limit: int | None = None, newest: bool = False) -> list:
        from sqlalchemy import select

        query = select(*columns, self.table.c.fingerprint).where(where)
        query = query.order_by(self.table.c.row.desc() if newest else self.table.c.row)
        with self.engine.connect() as conn:
            return conn.execute(query if limit is None else query.limit(limit)).all()

    def by_sha256(self, sha256: str) -> list[Generation]:
        return list(self._select(self.table.c.sha256 == sha256))

    def rows(self, key_id: str | None = None, limit: int | None = None) -> Iterator[Generation]:
        """Every row (or ``key_id``'s), oldest first."""
        yield from self._select(None if key_id is None else self.table.c.key_id == key_id, limit)

    def count(self) -> int:
        from sqlalchemy import func, select

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())

    def _select(self, where=None, limit: int | None = None, newest: bool = False) -> Iterator[Generation]:
        from sqlalchemy import select

        columns = [c for c in self.table.c if c.name != "row"]
        query = select(*columns).order_by(self.table.c.row.desc() if newest else self.table.c.row)
        if where is not None:
            query = query.where(where)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                yield _from_db(dict(row))

    def export(self, path: str | os.PathLike, force: bool = False) -> int:
        """Write every row to ``path`` (``.jsonl`` or ``.parquet``); an existing file is kept unless ``force``."""
        path = Path(path)
        _check_format(path)
        if path.exists() and not force:
            raise LogError(f"{path} exists: give --force to replace it")
        records = [g.record() for g in self.rows()]
        if path.suffix == ".jsonl":
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            os.replace(tmp, path)
        else:
            pa, pq = _arrow()
            pq.write_table(pa.Table.from_pylist(records, schema=_arrow_schema(pa)), path)
        os.chmod(path, 0o600)
        return len(records)

    def import_(self, path: str | os.PathLike) -> int:
        """Append the rows of ``path`` (``.jsonl`` or ``.parquet``, as ``export`` writes); rows
        whose image id is logged already are skipped. Returns the rows added."""
        path = Path(path)
        _check_format(path)
        if not path.is_file():
            raise LogError(f"{path}: no such file")
        try:
            if path.suffix == ".jsonl":
                records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            else:
                _, pq = _arrow()
                records = pq.read_table(path).to_pylist()
            rows = [Generation.from_record(r) for r in records]
        except (ValueError, TypeError, OSError, LogError) as e:
            raise LogError(f"{path}: not a generation-log export ({_first_line(e)})") from None
        known = self.known([g.image_id for g in rows])
        return self.add(g for g in rows if g.image_id not in known)

    def known(self, image_ids: list[str]) -> set[str]:
        """Which of ``image_ids`` are logged."""
        from sqlalchemy import select

        out = set()
        with self.engine.connect() as conn:
            for i in range(0, len(image_ids), 500):
                chunk = image_ids[i : i + 500]
                out |= set(conn.execute(select(self.table.c.image_id).where(self.table.c.image_id.in_(chunk))).scalars())
        return out


def _to_db(g: Generation) -> dict:
    row = asdict(g)
    row["fingerprint"] = None if g.fingerprint is None else np.asarray(g.fingerprint, "<f2").tobytes()
    return row


def _from_db(row: dict) -> Generation:
    fp, manifest = row["fingerprint"], row.get("c2pa")
    return Generation(**{**row, "fingerprint": None if fp is None else np.frombuffer(bytes(fp), "<f2").copy(),
                         "c2pa": None if manifest is None else bytes(manifest)})


def _matrix(blobs: list) -> np.ndarray:
    """float16 fingerprints as stored -> (m, d) float32 (m = 0: (0, 0))."""
    if not blobs:
        return np.zeros((0, 0), np.float32)
    return np.frombuffer(b"".join(bytes(b) for b in blobs), "<f2").reshape(len(blobs), -1).astype(np.float32)


def _check_format(path: Path) -> None:
    if path.suffix not in FORMATS:
        raise LogError(f"{path}: the format must be one of {', '.join(FORMATS)} (by the file's suffix)")


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LogError("Parquet needs pyarrow (pip install 'ringmark[scale]'), or use .jsonl") from None
    return pa, pq


def _arrow_schema(pa):
    return pa.schema([("image_id", pa.string()), ("key_id", pa.string()), ("model", pa.string()),
                      ("seed", pa.int64()), ("prompt", pa.string()), ("steps", pa.int64()),
                      ("guidance", pa.float64()), ("created", pa.string()), ("file", pa.string()),
                      ("sha256", pa.string()), ("fingerprint", pa.list_(pa.float32())),
                      ("fingerprint_kind", pa.string()), ("c2pa", pa.string())])


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
