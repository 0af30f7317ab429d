"""API keys, rate windows and per-key job limits in the real database (SQLite and PostgreSQL),
including several stores at once standing for several ingress replicas."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from serve_app.cli import main as cli
from serve_app.core.job_params import JobParams
from serve_app.core.job_store import PROCESSING, JobStore, TooManyJobs
from serve_app.core.keys import WINDOW_S, KeyStore, hash_secret

P = JobParams(model_id="u2netp")


def test_keys_are_stored_hashed_and_revocable(db_url):
    store = KeyStore(db_url)
    key, secret = store.create("alice", credits=12.5, rate_limit_per_min=10)
    assert secret.startswith("bgr_") and len(secret) >= 40 and key.prefix == secret[:12]
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash FROM api_keys")).scalar_one()
    assert stored == hash_secret(secret) and secret not in stored
    assert store.authenticate(secret) == key
    assert store.authenticate(secret + "x") is None and store.authenticate("nope") is None
    with pytest.raises(ValueError, match="already exists"):
        store.create("alice")
    assert store.revoke("alice") and not store.revoke("alice")
    assert store.authenticate(secret) is None
    assert [k.name for k in store.list()] == ["alice"] and store.list()[0].revoked_at


def test_rate_window_counts_and_resets(db_url):
    store = KeyStore(db_url)
    t0 = 1_700_000_000.0 - (1_700_000_000.0 % WINDOW_S) + 10  # 10 s into a window
    seen = [store.hit("k1", 3, t0 + i) for i in range(4)]
    assert [w.remaining for w in seen] == [2, 1, 0, 0]
    assert [w.allowed for w in seen] == [True, True, True, False]
    assert all(w.reset == t0 - 10 + WINDOW_S for w in seen)
    assert seen[3].retry_after(t0 + 3) == WINDOW_S - 13
    assert store.hit("k2", 3, t0).remaining == 2  # keys are counted apart
    nxt = store.hit("k1", 3, t0 + WINDOW_S)  # the next window starts over
    assert nxt.allowed and nxt.remaining == 2


def test_rate_limit_holds_across_replicas(db_url):
    """Four stores (four ingress replicas) x 10 threads hitting one key at once: exactly the
    limit gets through, because the count lives in the database."""
    stores = [KeyStore(db_url) for _ in range(4)]
    t = 1_700_000_000.0 - (1_700_000_000.0 % WINDOW_S) + 1
    allowed = []
    lock = threading.Lock()

    def client(store: KeyStore) -> None:
        for _ in range(5):
            ok = store.hit("shared", 50, t).allowed
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=client, args=(s,)) for s in stores for _ in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(allowed) == 200 and sum(allowed) == 50


def test_concurrent_job_limit_is_atomic_across_replicas(db_url):
    keys = KeyStore(db_url)
    key, _ = keys.create("bob", max_concurrent_jobs=3)
    replicas = [JobStore(db_url) for _ in range(3)]
    results = []
    lock = threading.Lock()

    def submit(store: JobStore) -> None:
        for _ in range(3):
            try:
                store.create(api="v1", kind="image", params=P, start=True, owner=key.key_id,
                             max_active=3)
                outcome = "ok"
            except TooManyJobs:
                outcome = "refused"
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=submit, args=(s,)) for s in replicas for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count("ok") == 3 and results.count("refused") == 15
    with replicas[0].engine.connect() as conn:
        active = conn.execute(text("SELECT count(*) FROM jobs WHERE owner = :o AND state = :s"),
                              {"o": key.key_id, "s": PROCESSING}).scalar_one()
    assert active == 3
    # a created (not started) job does not count; starting it is checked the same way
    job, _ = replicas[0].create(api="v1", kind="image", params=P, owner=key.key_id,
                                max_active=3)
    with pytest.raises(TooManyJobs):
        replicas[0].start(job.job_id, max_active=3)
    assert replicas[0].start(job.job_id, max_active=4).state == PROCESSING


def test_idempotency_keys_are_per_api_key(db_url):
    jobs = JobStore(db_url)
    a, created_a = jobs.create(api="v1", kind="image", params=P, idempotency_key="k", owner="A")
    b, created_b = jobs.create(api="v1", kind="image", params=P, idempotency_key="k", owner="B")
    again, created_again = jobs.create(api="v1", kind="image", params=P, idempotency_key="k",
                                       owner="A")
    assert created_a and created_b and not created_again
    assert a.job_id != b.job_id and again.job_id == a.job_id


def test_older_databases_gain_new_columns(tmp_path):
    """A database made before `owner` existed is brought up to date when the app connects."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE uploads (upload_id VARCHAR(36) PRIMARY KEY, "
                          "key VARCHAR(256) NOT NULL, filename VARCHAR(255) NOT NULL, "
                          "media_type VARCHAR(64) NOT NULL, kind VARCHAR(8) NOT NULL, "
                          "size INTEGER NOT NULL, created_at DATETIME NOT NULL)"))
    jobs = JobStore(url)
    assert "owner" in {c["name"] for c in inspect(jobs.engine).get_columns("uploads")}
    jobs.uploads.add("u1", "uploads/u1/input", "a.png", "image/png", "image", 3, owner="A")
    assert jobs.uploads.get("u1")["owner"] == "A"


def test_keys_cli(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli(["keys", "--database-url", url, "create", "carol", "--credits", "5",
                "--rate-limit", "7"]) == 0
    secret = capsys.readouterr().out.strip()
    store = KeyStore(url)
    assert store.authenticate(secret).rate_limit_per_min == 7
    assert cli(["keys", "--database-url", url, "limits", "carol", "--max-jobs", "2"]) == 0
    assert store.get("carol").max_concurrent_jobs == 2
    capsys.readouterr()
    assert cli(["keys", "--database-url", url, "list"]) == 0
    listing = capsys.readouterr().out
    assert "carol" in listing and "active" in listing and secret not in listing
    assert cli(["keys", "--database-url", url, "revoke", "carol"]) == 0
    assert cli(["keys", "--database-url", url, "revoke", "carol"]) == 1
    assert store.authenticate(secret) is None


def test_credits_charges_and_usage(db_url, tmp_path, capsys):
    from serve_app.core.keys import Charge
    keys = KeyStore(db_url)
    key, _ = keys.create("dora", credits=10)
    keys.charge(key.key_id, Charge("image.matte", 1, 1.0), request_id="r1")
    keys.charge(key.key_id, Charge("image.matte", 1, 1.0))
    keys.charge(key.key_id, Charge("shotgun", 3, 3.0))
    assert keys.balance(key.key_id) == pytest.approx(5.0)
    rows = {r.operation: r for r in keys.usage(key.key_id)}
    assert (rows["image.matte"].count, rows["image.matte"].credits) == (2, 2.0)
    assert (rows["shotgun"].units, rows["shotgun"].credits) == (3.0, 3.0)
    assert keys.add_credits("dora", 2.5) == pytest.approx(7.5)
    assert keys.add_credits("nobody", 1) is None

    # a job is charged to its owner in the transaction that completes it, and only then
    jobs = JobStore(db_url)
    job, _ = jobs.create(api="v1", kind="video", params=P, start=True, owner=key.key_id)
    assert jobs.claim("w", 30).job_id == job.job_id
    assert jobs.complete(job.job_id, "w", "out", "video/webm", 60, Charge("v1:video", 2.5, 2.5))
    assert not jobs.complete(job.job_id, "w", "out", "video/webm", 60, Charge("v1:video", 2.5, 2.5))
    assert keys.balance(key.key_id) == pytest.approx(5.0)
    failed, _ = jobs.create(api="v1", kind="image", params=P, start=True, owner=key.key_id)
    jobs.claim("w", 30)
    jobs.fail(failed.job_id, "broken", worker_id="w")
    assert keys.balance(key.key_id) == pytest.approx(5.0)  # failures cost nothing

    if db_url.startswith("sqlite"):
        assert cli(["keys", "--database-url", db_url, "usage", "dora"]) == 0
        out = capsys.readouterr().out
        assert "balance 5" in out and "v1:video" in out and "shotgun" in out


def test_balances_survive_float_arithmetic(tmp_path):
    from serve_app.core.keys import Charge
    keys = KeyStore(f"sqlite:///{tmp_path / 'f.db'}")
    key, _ = keys.create("eve", credits=0.3)
    for _ in range(2):
        keys.charge(key.key_id, Charge("image.matte", 1, 0.1))
    assert keys.balance(key.key_id) == 0.1  # not 0.09999999999999998: the next 0.1 is covered


def test_migration_restores_indexes_of_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'idx.db'}"
    JobStore(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:  # as an older version left it: no owner column, no index
        conn.execute(text("DROP INDEX ix_jobs_owner"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN owner"))
    assert "owner" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    jobs = JobStore(url)
    assert "ix_jobs_owner" in {i["name"] for i in inspect(jobs.engine).get_indexes("jobs")}
