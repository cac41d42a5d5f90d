"""Log readers: every row becomes an event or a counted rejection; output is in event-time order."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.sources import ColumnMapping, EventLog, MovieLensOptions, load_log, read_events
from tests.support.data import shared_file

TS = 1_511_658_000


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_taobao_rows_map_behaviours_and_sort_stably(tmp_path: Path) -> None:
    rows = f"1,10,5,pv,{TS + 5}\n2,11,5,buy,{TS}\n3,12,5,cart,{TS}\n1,13,6,fav,{TS + 1}\n"
    events, report = read_events(write(tmp_path, "t.csv", rows.encode()), "taobao")
    assert [(e.user_id, e.type.value) for e in events] == [
        ("2", "buy"),
        ("3", "cart"),
        ("1", "fav"),
        ("1", "click"),
    ]
    assert report.valid == report.rows == 4
    assert events[0].event_id == "t:2"  # file-derived ids make re-replays dedupable


def test_bad_taobao_rows_are_counted_with_reasons(tmp_path: Path) -> None:
    rows = [
        f"1,10,5,pv,{TS}".encode(),
        b"1,10,5,pv",  # missing column
        f"1,10,5,like,{TS}".encode(),  # unknown behaviour
        b"1,10,5,pv,nan",
        b"1,10,5,pv,99999999999",
        b"\xff\xfe,10,5,pv,1511658000",
        f"{'u' * 200},10,5,pv,{TS}".encode(),
        f",10,5,pv,{TS}".encode(),
    ]
    events, report = read_events(write(tmp_path, "t.csv", b"\n".join(rows)), "taobao")
    assert len(events) == 1
    assert dict(report.bad) == {
        "missing_field": 2,
        "unknown_type": 1,
        "bad_timestamp": 2,
        "not_utf8": 1,
        "bad_value": 1,
    }
    assert sorted(e.line for e in report.examples) == list(range(2, 9))


def test_load_log_warns_how_many_rows_it_skipped(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    rows = f"1,10,5,pv,{TS}\n1,11,5,pv,{TS + 1}\n1,12,5,pv,820454400\n".encode()  # last: 1996
    with caplog.at_level(logging.WARNING, logger="streaming.sources"):
        log = load_log(write(tmp_path, "t.csv", rows), "taobao")
    assert len(log.ts) == 2
    (record,) = caplog.records
    assert "t.csv: skipped bad rows; 3 rows: 2 valid" in record.getMessage()
    assert "bad_timestamp=1" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streaming.sources"):
        assert len(load_log(tmp_path / "t.csv", "taobao", min_ts=0.0).ts) == 3
    assert not caplog.records


def test_movielens_ratings_and_genres(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        f"userId,movieId,rating,timestamp\n1,7,4.5,{TS}\n1,8,2.0,{TS + 1}\n2,7,x,{TS}\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n7,"A, film",Drama|War\n8,B,Comedy\n'
    )
    events, report = read_events(tmp_path, "movielens")
    assert [(e.item_id, e.category_id, e.type.value) for e in events] == [
        ("7", "Drama", "click"),
        ("8", "Comedy", "impression"),
    ]
    assert dict(report.bad) == {"wrong_type": 1}
    skipped, report = read_events(
        tmp_path, "movielens", movielens=MovieLensOptions(low_ratings="skip")
    )
    assert len(skipped) == 1 and report.filtered == 1


def test_jsonl_csv_and_parquet_agree(tmp_path: Path) -> None:
    records = [{"uid": f"u{i}", "iid": i, "t": TS + i, "kind": "click"} for i in range(5)]
    mapping = ColumnMapping.parse("user_id=uid,item_id=iid,ts=t,type=kind,category_id=")
    jsonl = b"".join(
        orjson.dumps({"user_id": r["uid"], "item_id": r["iid"], "ts": r["t"], "type": "click"})
        + b"\n"
        for r in records
    )
    csv_text = "uid,iid,t,kind\n" + "".join(
        f"{r['uid']},{r['iid']},{r['t']},click\n" for r in records
    )
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "e.parquet")
    from_jsonl, _ = read_events(write(tmp_path, "e.jsonl", jsonl), "jsonl")
    from_csv, _ = read_events(write(tmp_path, "e.csv", csv_text.encode()), "csv", mapping=mapping)
    from_parquet, _ = read_events(tmp_path / "e.parquet", "parquet", mapping=mapping)
    key = [(e.user_id, e.item_id, e.ts) for e in from_jsonl]
    assert key == [(e.user_id, e.item_id, e.ts) for e in from_csv]
    assert key == [(e.user_id, e.item_id, e.ts) for e in from_parquet]


def test_event_log_columns(tmp_path: Path) -> None:
    events, _ = read_events(
        write(tmp_path, "t.csv", f"1,10,5,pv,{TS}\n2,11,6,buy,{TS - 1}\n".encode()), "taobao"
    )
    log = EventLog.from_events(events)
    assert len(log) == 2 and list(log.item_id) == ["11", "10"] and log.ts.dtype.kind == "f"


def test_real_taobao_users_file_reads_completely() -> None:
    events, report = read_events(shared_file("taobao_users", "UserBehavior.csv"), "taobao")
    assert report.valid == report.rows == 14_316 and not report.bad
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))


bad_row = st.one_of(
    st.just(b"1,2,3,pv"),  # missing field
    st.just(b"1,2,3,pv,1511658000,extra"),
    st.sampled_from([b"nan", b"inf", b"-1", b"1e20", b"abc", b""]).map(lambda t: b"1,2,3,pv," + t),
    st.integers(129, 400).map(lambda n: b"u" * n + b",2,3,pv,1511658000"),
    st.binary(min_size=1, max_size=8)
    .filter(lambda b: not _utf8(b) and b"\n" not in b and b"\r" not in b)
    .map(lambda b: b + b",2,3,pv,1511658000"),
    st.sampled_from([b"click!", b"", b"PVX"]).map(lambda t: b"1,2,3," + t + b",1511658000"),
)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    valid=st.lists(
        st.tuples(st.integers(1, 50), st.integers(1, 10**6), st.integers(0, 86_400)), max_size=30
    ),
    bad=st.lists(bad_row, max_size=30),
    seed=st.randoms(use_true_random=False),
)
def test_bad_rows_never_disturb_valid_ones(tmp_path_factory, valid, bad, seed) -> None:  # type: ignore[no-untyped-def]
    good_rows = [f"{u},{i},7,pv,{TS + t}".encode() for u, i, t in valid]
    mixed = good_rows + bad
    seed.shuffle(mixed)
    path = tmp_path_factory.mktemp("mix") / "m.csv"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    events, report = read_events(path, "taobao")
    clean, _ = read_events(write(path.parent, "clean.csv", b"\n".join(good_rows) + b"\n"), "taobao")
    assert sum(report.bad.values()) == len([b for b in bad if b.strip()])
    assert report.valid == len(good_rows)
    key = lambda e: (e.user_id, e.item_id, e.ts)  # noqa: E731
    assert sorted(map(key, events)) == sorted(map(key, clean))
