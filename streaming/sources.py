"""Readers for historical logs: Taobao UserBehavior, MovieLens, JSON lines, CSV and Parquet.

Every row either becomes a validated :class:`~contracts.schema.Event` or is counted in the
:class:`LoadReport` with its reason; nothing is dropped silently. Events come back in event-time
order (a stable sort, so ties keep file order), which makes replays deterministic.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "UserBehavior.csv"
>>> _ = path.write_bytes(b"1,10,7,pv,1511658000\\n1,11,7,buy,1511657000\\n2,x,7,pv,nan\\n")
>>> events, report = read_events(path, "taobao")
>>> [(e.item_id, e.type.value) for e in events], dict(report.bad)
([('11', 'buy'), ('10', 'click')], {'bad_timestamp': 1})
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contracts.schema import MIN_TS, Event, InvalidEvent, Reason, parse_event, validate_record

log = logging.getLogger(__name__)

TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "type", "ts")
MAX_EXAMPLES = 20


class LogFormat(StrEnum):
    TAOBAO = "taobao"
    MOVIELENS = "movielens"
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column holds each event field (generic CSV/Parquet).

    >>> ColumnMapping.parse("user_id=userId,item_id=movieId,ts=timestamp").item_id
    'movieId'
    """

    user_id: str = "user_id"
    item_id: str = "item_id"
    category_id: str | None = "category_id"
    type: str | None = "type"
    ts: str = "ts"
    default_type: str = "click"

    @classmethod
    def parse(cls, text: str) -> ColumnMapping:
        pairs = dict(part.split("=", 1) for part in text.split(",") if part.strip())
        unknown = set(pairs) - {"user_id", "item_id", "category_id", "type", "ts", "default_type"}
        if unknown:
            raise ValueError(f"unknown fields in column mapping: {sorted(unknown)}")
        return cls(**{k.strip(): v.strip() for k, v in pairs.items()})


@dataclass(frozen=True)
class MovieLensOptions:
    min_click_rating: float = 4.0
    low_ratings: str = "impression"  # "impression" (an explicit negative) or "skip" (filtered)


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    detail: str


@dataclass
class LoadReport:
    """Counts of what a read produced; ``bad`` is keyed by :class:`Reason` value."""

    rows: int = 0
    valid: int = 0
    filtered: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    examples: list[BadRow] = field(default_factory=list)

    def reject(self, line: int, err: InvalidEvent) -> None:
        self.bad[err.reason.value] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(BadRow(line, err.reason.value, err.detail))

    def summary(self) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in sorted(self.bad.items())) or "none"
        return f"{self.rows} rows: {self.valid} valid, {self.filtered} filtered, bad: {bad}"


def read_events(
    path: str | Path,
    fmt: str | LogFormat,
    mapping: ColumnMapping | None = None,
    movielens: MovieLensOptions | None = None,
    now: float | None = None,
    min_ts: float = MIN_TS,
) -> tuple[list[Event], LoadReport]:
    """Read a whole log, validate every row, and return events sorted by event time."""
    fmt = LogFormat(fmt)
    path = Path(path)
    report = LoadReport()
    rows = _records(path, fmt, mapping or ColumnMapping(), movielens or MovieLensOptions(), report)
    events: list[Event] = []
    stem = path.stem
    for line, record in rows:
        report.rows += 1
        if record is None:
            report.filtered += 1
            continue
        try:
            events.append(_to_event(record, f"{stem}:{line}", now, min_ts))
        except InvalidEvent as err:
            report.reject(line, err)
    report.valid = len(events)
    events.sort(key=lambda e: e.ts)  # stable: equal timestamps keep file order
    return events, report


Record = dict[str, Any] | bytes | InvalidEvent | None


def _to_event(record: Record, default_event_id: str, now: float | None, min_ts: float) -> Event:
    if isinstance(record, InvalidEvent):
        raise record
    if isinstance(record, bytes):
        event = parse_event(record, now=now, min_ts=min_ts)
    else:
        assert record is not None
        event = validate_record(record, now=now, min_ts=min_ts)
    if event.event_id is None:
        event = _with_event_id(event, default_event_id)
    return event


def _with_event_id(event: Event, event_id: str) -> Event:
    return Event(
        user_id=event.user_id,
        item_id=event.item_id,
        type=event.type,
        ts=event.ts,
        category_id=event.category_id,
        event_id=event_id,
        request_id=event.request_id,
        features=event.features,
    )


def _records(
    path: Path, fmt: LogFormat, mapping: ColumnMapping, ml: MovieLensOptions, report: LoadReport
) -> Iterator[tuple[int, Record]]:
    if fmt is LogFormat.TAOBAO:
        return _taobao_rows(path)
    if fmt is LogFormat.MOVIELENS:
        return _movielens_rows(path, ml)
    if fmt is LogFormat.JSONL:
        return _jsonl_rows(path)
    if fmt is LogFormat.CSV:
        return _mapped(_csv_dicts(path), mapping)
    return _mapped(_parquet_dicts(path), mapping)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def _decode(line: bytes) -> str | InvalidEvent:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        return InvalidEvent(Reason.NOT_UTF8, str(err))


def _taobao_rows(path: Path) -> Iterator[tuple[int, Record]]:
    for number, line in _lines(path):
        text = _decode(line)
        if isinstance(text, InvalidEvent):
            yield number, text
            continue
        parts = text.split(",")
        if len(parts) != len(TAOBAO_COLUMNS):
            detail = f"expected {len(TAOBAO_COLUMNS)} columns, got {len(parts)}"
            yield number, InvalidEvent(Reason.MISSING_FIELD, detail)
            continue
        yield number, {k: (v or None) for k, v in zip(TAOBAO_COLUMNS, parts, strict=True)}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Record]]:
    yield from _lines(path)


def _movielens_paths(path: Path) -> tuple[Path, Path | None]:
    ratings = path / "ratings.csv" if path.is_dir() else path
    movies = ratings.parent / "movies.csv"
    return ratings, (movies if movies.exists() else None)


def _movie_genres(movies: Path | None) -> dict[str, str]:
    if movies is None:
        return {}
    with open(movies, newline="", encoding="utf-8") as fh:
        genres = {}
        for row in csv.DictReader(fh):
            first = row["genres"].split("|")[0]
            genres[row["movieId"]] = "0" if first.startswith("(no genres") else first
        return genres


def _movielens_rows(path: Path, ml: MovieLensOptions) -> Iterator[tuple[int, Record]]:
    ratings, movies = _movielens_paths(path)
    genres = _movie_genres(movies)
    for number, row in _csv_dicts(ratings):
        if isinstance(row, InvalidEvent):
            yield number, row
            continue
        yield number, _movielens_record(row, genres, ml)


def _movielens_record(row: dict[str, str], genres: dict[str, str], ml: MovieLensOptions) -> Record:
    try:
        rating = float(row.get("rating", ""))
    except ValueError:
        return InvalidEvent(Reason.WRONG_TYPE, f"rating {row.get('rating')!r} is not a number")
    clicked = rating >= ml.min_click_rating
    if not clicked and ml.low_ratings == "skip":
        return None
    movie = row.get("movieId") or None
    return {
        "user_id": row.get("userId") or None,
        "item_id": movie,
        "category_id": genres.get(movie or "", "0"),
        "type": "click" if clicked else "impression",
        "ts": row.get("timestamp") or None,
        "features": {"rating": rating},
    }


def _csv_dicts(path: Path) -> Iterator[tuple[int, dict[str, Any] | InvalidEvent]]:
    header: list[str] | None = None
    for number, line in _lines(path):
        text = _decode(line)
        if isinstance(text, InvalidEvent):
            yield number, text
            continue
        parts = next(csv.reader(io.StringIO(text)))
        if header is None:
            header = parts
            continue
        if len(parts) != len(header):
            detail = f"expected {len(header)} columns, got {len(parts)}"
            yield number, InvalidEvent(Reason.MISSING_FIELD, detail)
            continue
        yield number, dict(zip(header, parts, strict=True))


def _parquet_dicts(path: Path) -> Iterator[tuple[int, dict[str, Any] | InvalidEvent]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _mapped(
    rows: Iterator[tuple[int, dict[str, Any] | InvalidEvent]], mapping: ColumnMapping
) -> Iterator[tuple[int, Record]]:
    for number, row in rows:
        if isinstance(row, InvalidEvent):
            yield number, row
            continue
        record: dict[str, Any] = {
            "user_id": _blank_none(row.get(mapping.user_id)),
            "item_id": _blank_none(row.get(mapping.item_id)),
            "ts": _blank_none(row.get(mapping.ts)),
            "type": mapping.default_type,
        }
        if mapping.category_id and mapping.category_id in row:
            record["category_id"] = _blank_none(row[mapping.category_id])
        if mapping.type and mapping.type in row:
            record["type"] = _blank_none(row[mapping.type])
        yield number, record


def _blank_none(value: Any) -> Any:
    return None if value == "" else value


@dataclass(frozen=True)
class EventLog:
    """A log in columnar form (equal-length numpy arrays, event-time order) for offline work."""

    user_id: np.ndarray  # (N,) object: str
    item_id: np.ndarray  # (N,) object: str
    category_id: np.ndarray  # (N,) object: str
    type: np.ndarray  # (N,) object: str, EventType values
    ts: np.ndarray  # (N,) float64 seconds

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def from_events(cls, events: list[Event]) -> EventLog:
        def column(name: str) -> np.ndarray:
            return np.array([getattr(e, name) for e in events], dtype=object)

        return cls(
            user_id=column("user_id"),
            item_id=column("item_id"),
            category_id=column("category_id"),
            type=np.array([e.type.value for e in events], dtype=object),
            ts=np.array([e.ts for e in events], dtype=np.float64),
        )


def load_log(
    path: str | Path,
    fmt: str | LogFormat,
    mapping: ColumnMapping | None = None,
    movielens: MovieLensOptions | None = None,
    min_ts: float = MIN_TS,
) -> EventLog:
    """Read a log into columnar form (event-time order). Bad rows are skipped, and a warning says
    how many for each reason (``read_events`` returns the full report)."""
    events, report = read_events(path, fmt, mapping=mapping, movielens=movielens, min_ts=min_ts)
    if report.bad:
        log.warning("%s: skipped bad rows; %s", path, report.summary())
    return EventLog.from_events(events)


def encode_jsonl(events: list[Event]) -> bytes:
    """Events as JSON lines (the ``jsonl`` format's inverse)."""
    return b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in events)
