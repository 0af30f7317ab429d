"""The shotgun/selection store against real SQLite (a file) and real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from pipelines.errors import InvalidRequest
from serve_app import cli
from serve_app.core.errors import UnknownJob
from serve_app.core.store import ModelRun, Store, WinRate


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def ok(model_id: str, ms: int = 100) -> ModelRun:
    return ModelRun(model_id, "success", ms, 0.0)


def failed(model_id: str) -> ModelRun:
    return ModelRun(model_id, "error", 5, 0.0)


def test_record_and_select_round_trip(store):
    store.record_job("job-1", "remove-background", [ok("u2netp", 120), failed("birefnet")])
    sid = store.log_selection("job-1", "u2netp", image_category="people", notes="clean hair")
    assert str(uuid.UUID(sid)) == sid
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT job_id, selected_model_id, image_category, notes "
                                "FROM selections WHERE selection_id = :s"), {"s": sid}).one()
        runs = conn.execute(text("SELECT model_id, status, processing_time_ms FROM shotgun_runs "
                                 "ORDER BY model_id")).all()
        kind = conn.execute(text("SELECT kind FROM shotgun_jobs")).scalar_one()
    assert tuple(row) == ("job-1", "u2netp", "people", "clean hair")
    assert [tuple(r) for r in runs] == [("birefnet", "error", 5), ("u2netp", "success", 120)]
    assert kind == "remove-background"
    # Several selections for one job are separate rows.
    assert store.log_selection("job-1", "u2netp") != sid


def test_unknown_job(store):
    with pytest.raises(UnknownJob) as exc:
        store.log_selection("nope", "u2netp")
    assert exc.value.message == "Unknown job_id 'nope': no shotgun job with this id."
    assert exc.value.details == {"field": "job_id", "received": "nope"}


def test_model_not_in_job(store):
    store.record_job("job-1", "process", [ok("u2netp"), ok("isnet"), failed("birefnet")])
    with pytest.raises(InvalidRequest) as exc:
        store.log_selection("job-1", "modnet")
    assert type(exc.value) is InvalidRequest
    assert "not part of" in exc.value.message
    assert exc.value.details == {
        "field": "selected_model_id", "received": "modnet", "allowed": ["isnet", "u2netp"]}


def test_model_failed_in_job(store):
    store.record_job("job-1", "process", [ok("u2netp"), failed("birefnet")])
    with pytest.raises(InvalidRequest) as exc:
        store.log_selection("job-1", "birefnet")
    assert "no result" in exc.value.message
    assert exc.value.details == {
        "field": "selected_model_id", "received": "birefnet", "allowed": ["u2netp"]}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM selections")).scalar_one() == 0


def test_category_all_is_reserved(store):
    store.record_job("job-1", "process", [ok("u2netp")])
    with pytest.raises(InvalidRequest) as exc:
        store.log_selection("job-1", "u2netp", image_category="all")
    assert exc.value.details == {"field": "image_category", "received": "all"}


def scenario(store: Store) -> None:
    """Three models A, B, C; four jobs; seven selections in two categories plus one without.

    j1: A B C   j2: A B (C failed)   j3: A C   j4: B C
    people:   j1->A  j2->A  j3->C    products: j1->B  j4->C  j2->A    (none): j4->B
    """
    a, b, c = "model-a", "model-b", "model-c"
    store.record_job("j1", "remove-background", [ok(a), ok(b), ok(c)])
    store.record_job("j2", "remove-background", [ok(a), ok(b), failed(c)])
    store.record_job("j3", "process", [ok(a), ok(c)])
    store.record_job("j4", "process", [ok(b), ok(c)])
    for job, model, cat in [("j1", a, "people"), ("j2", a, "people"), ("j3", c, "people"),
                            ("j1", b, "products"), ("j4", c, "products"), ("j2", a, "products"),
                            ("j4", b, None)]:
        store.log_selection(job, model, image_category=cat)


# By hand: people offers A in j1 j2 j3 (wins 2), B in j1 j2 (0), C in j1 j3 (1);
# products offers A in j1 j2 (wins 1), B in j1 j4 j2 (1), C in j1 j4 (1);
# uncategorized offers B, C in j4 (B wins); all = the sums.
EXPECTED = [  # (category, model, offered, wins, win_rate), in the documented order
    ("all", "model-a", 5, 3, 0.6),
    ("all", "model-c", 5, 2, 0.4),
    ("all", "model-b", 6, 2, 0.3333),
    ("people", "model-a", 3, 2, 0.6667),
    ("people", "model-c", 2, 1, 0.5),
    ("people", "model-b", 2, 0, 0.0),
    ("products", "model-a", 2, 1, 0.5),  # tie with model-c: model_id decides
    ("products", "model-c", 2, 1, 0.5),
    ("products", "model-b", 3, 1, 0.3333),
    ("uncategorized", "model-b", 1, 1, 1.0),
    ("uncategorized", "model-c", 1, 0, 0.0),
]


def as_tuples(rates: list[WinRate]) -> list[tuple]:
    return [(r.category, r.model_id, r.offered, r.wins, round(r.win_rate, 4)) for r in rates]


def test_win_rates(store):
    assert store.win_rates() == []
    scenario(store)
    assert as_tuples(store.win_rates()) == EXPECTED


def test_win_rates_category_filter(store):
    scenario(store)
    assert as_tuples(store.win_rates("people")) == [e for e in EXPECTED if e[0] == "people"]
    assert as_tuples(store.win_rates("all")) == [e for e in EXPECTED if e[0] == "all"]
    assert as_tuples(store.win_rates("uncategorized")) == EXPECTED[-2:]
    assert store.win_rates("animals") == []


def test_durable_across_reopen(db_url):
    first = Store(db_url)
    first.record_job("j1", "process", [ok("model-a"), ok("model-b")])
    first.log_selection("j1", "model-b", image_category="people")
    first.close()
    second = Store(db_url)
    try:
        assert as_tuples(second.win_rates("people")) == [
            ("people", "model-b", 1, 1, 1.0), ("people", "model-a", 1, 0, 0.0)]
        second.log_selection("j1", "model-a")  # the job itself survived too
    finally:
        second.close()


def test_concurrent_log_selection(store):
    store.record_job("j1", "process", [ok("model-a"), ok("model-b")])
    barrier = threading.Barrier(8)

    def select(i: int) -> str:
        barrier.wait()
        return store.log_selection("j1", "model-a" if i % 2 else "model-b", image_category="x")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(select, range(8)))
    assert len(set(ids)) == 8
    assert as_tuples(store.win_rates("x")) == [
        ("x", "model-a", 8, 4, 0.5), ("x", "model-b", 8, 4, 0.5)]


def test_sqlite_wal_and_in_memory(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")  # parent dirs are created
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 5000
    s.close()
    mem = Store("sqlite://")  # one in-memory database, shared by threads
    try:
        mem.record_job("j1", "process", [ok("model-a")])
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: mem.log_selection("j1", "model-a"), range(8)))
        assert as_tuples(mem.win_rates("all")) == [("all", "model-a", 8, 8, 1.0)]
    finally:
        mem.close()


def test_cli_stats(db_url, capsys):
    s = Store(db_url)
    scenario(s)
    s.close()
    assert cli.main(["selections", "stats", "--database-url", db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["category", "model", "wins", "offered", "win", "rate"]
    assert lines[1].split() == ["all", "model-a", "3", "5", "60.0%"]
    assert len(lines) == 1 + len(EXPECTED)
    assert cli.main(["selections", "stats", "--category", "people", "--database-url",
                     db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines[1:]] == [
        ["people", "model-a"], ["people", "model-c"], ["people", "model-b"]]
    assert lines[1].split()[-1] == "66.7%"


def test_a_selection_records_who_made_it(store):
    store.record_job("job-owned", "remove-background", [ok("u2netp")], owner="key-1")
    selection = store.log_selection("job-owned", "u2netp", "product", owner="key-1")
    with store.engine.connect() as conn:
        owner = conn.execute(text("SELECT owner FROM selections WHERE selection_id = :s"),
                             {"s": selection}).scalar()
    assert owner == "key-1"


def test_log_level_setting_reaches_the_service_logger(monkeypatch):
    import logging

    from serve_app.core.settings import Settings, apply_log_level

    logger = logging.getLogger("ray.serve.bgremove")
    before = logger.level
    try:
        monkeypatch.setenv("BGR_LOG_LEVEL", "WARNING")
        apply_log_level(Settings())
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(before)
