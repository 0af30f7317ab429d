"""The durable job store against real SQLite and real PostgreSQL: state machine, audit trail,
leases and takeover, idempotency, webhook bookkeeping."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from serve_app.core.db import now
from serve_app.core.job_params import JobParams
from serve_app.core.job_store import COMPLETED, CREATED, FAILED, PROCESSING, JobStore, TransitionError
from serve_app.core.webhook_outbox import delivery_id

P = JobParams(model_id="u2netp")


@pytest.fixture
def jobs(db_url):
    s = JobStore(db_url, max_attempts=2)
    yield s
    s.close()


def new(jobs, **kw):
    job, created = jobs.create(api="v1", kind="image",
                               params=JobParams(model="light", model_id="u2netp"), **kw)
    assert created
    return job


def test_lifecycle_and_audit_trail(jobs):
    job = new(jobs, input_url="https://example.com/a.png")
    assert job.state == CREATED and job.started_at is None and job.attempts == 0
    started = jobs.start(job.job_id, job.params.model_copy(update={"output_format": "webp"}))
    assert started.state == PROCESSING and started.params == JobParams(
        model="light", model_id="u2netp", output_format="webp")
    claimed = jobs.claim("w1", lease_s=30)
    assert claimed.job_id == job.job_id and claimed.lease_owner == "w1" and claimed.attempts == 1
    assert jobs.claim("w2", lease_s=30) is None  # leased: nobody else gets it
    assert jobs.heartbeat(job.job_id, "w1", 30)
    assert jobs.complete(job.job_id, "w1", "jobs/x/output.png", "image/png", output_ttl_s=60)
    done = jobs.get(job.job_id)
    assert done.state == COMPLETED and done.output_key == "jobs/x/output.png"
    assert done.completed_at >= done.started_at >= done.created_at
    assert done.output_expires_at > now()
    trail = [(e.from_state, e.to_state) for e in jobs.events(job.job_id)]
    assert trail == [(None, CREATED), (CREATED, PROCESSING), (PROCESSING, PROCESSING),
                     (PROCESSING, COMPLETED)]
    assert all(e.reason for e in jobs.events(job.job_id))


def test_terminal_states_are_final(jobs):
    job = new(jobs, start=True)
    jobs.claim("w1", 30)
    assert jobs.fail(job.job_id, "model exploded", worker_id="w1")
    assert jobs.get(job.job_id).error == "model exploded"
    assert jobs.get(job.job_id).error_kind == "internal"  # ours unless told otherwise
    theirs = new(jobs, start=True)
    jobs.claim("w1", 30)
    assert jobs.fail(theirs.job_id, "Invalid image file", worker_id="w1", kind="input")
    assert jobs.get(theirs.job_id).error_kind == "input"
    assert not jobs.complete(job.job_id, "w1", "k", "image/png", 60)  # failed is terminal
    with pytest.raises(TransitionError):
        jobs.start(job.job_id)
    with pytest.raises(KeyError):
        jobs.start("no-such-job")


def test_only_the_lease_holder_finishes_a_running_job(jobs):
    job = new(jobs, start=True)
    jobs.claim("w1", 30)
    assert not jobs.complete(job.job_id, "intruder", "k", "image/png", 60)
    assert not jobs.fail(job.job_id, "no")  # without a worker id only created jobs can fail
    assert jobs.get(job.job_id).state == PROCESSING
    created = new(jobs)
    assert jobs.fail(created.job_id, "input could not be fetched")
    assert jobs.get(created.job_id).state == FAILED


def test_expired_lease_is_resumed_then_failed_after_max_attempts(jobs):
    job = new(jobs, start=True)
    assert jobs.claim("w1", lease_s=0.2).attempts == 1
    time.sleep(0.3)  # w1 "crashed": no heartbeat
    assert not jobs.heartbeat(job.job_id, "w2", 30)
    again = jobs.claim("w2", lease_s=0.2)
    assert again.job_id == job.job_id and again.attempts == 2 and again.lease_owner == "w2"
    assert not jobs.heartbeat(job.job_id, "w1", 30)  # the old worker lost it
    time.sleep(0.3)
    assert jobs.claim("w3", lease_s=30) is None  # max_attempts=2 used up: failed, not claimed
    failed = jobs.get(job.job_id)
    assert failed.state == FAILED and "interrupted 2 times" in failed.error
    reasons = [e.reason for e in jobs.events(job.job_id)]
    assert any("lease expired" in r and "attempt 2" in r for r in reasons)


def test_idempotency_key_returns_the_same_job(jobs):
    first, created = jobs.create(api="v1", kind="image", params=P, idempotency_key="k-1")
    again, created_again = jobs.create(api="v1", kind="image", params=JobParams(model_id="x"),
                                       idempotency_key="k-1")
    assert created and not created_again and again.job_id == first.job_id and again.params == P

    def make(_):
        return jobs.create(api="v1", kind="image", params=P, idempotency_key="k-2")[0].job_id

    with ThreadPoolExecutor(6) as pool:  # concurrent retries: still one job
        assert len(set(pool.map(make, range(6)))) == 1


def test_an_idempotency_key_is_per_api(jobs):
    """The same key on the HD submit and on /v1/jobs: two jobs, each found by its own API."""
    hd, _ = jobs.create(api="hd", kind="image", params=P, idempotency_key="k", owner="A")
    v1, created = jobs.create(api="v1", kind="image", params=P, idempotency_key="k", owner="A")
    assert created and v1.job_id != hd.job_id
    assert jobs.find_idempotent("A", "k", "hd").job_id == hd.job_id
    assert jobs.find_idempotent("A", "k", "v1").job_id == v1.job_id
    assert jobs.find_idempotent("B", "k", "v1") is None  # and per owner


def test_claims_are_exclusive_under_concurrency(jobs):
    ids = {new(jobs, start=True).job_id for _ in range(6)}
    with ThreadPoolExecutor(6) as pool:
        claimed = [j.job_id for j in pool.map(lambda i: jobs.claim(f"w{i}", 30), range(8)) if j]
    assert sorted(claimed) == sorted(ids)  # each job exactly once


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has no row locks
def test_a_claim_skips_a_row_another_worker_is_claiming(jobs, db_url):
    """PostgreSQL: while one worker's claim transaction holds the oldest queued row, another
    worker takes the next one at once (FOR UPDATE SKIP LOCKED) instead of waiting on the lock
    or racing for the same row."""
    import sqlalchemy as sa

    first, second = (new(jobs, start=True) for _ in range(2))
    other = sa.create_engine(db_url)
    with other.connect() as conn:
        tx = conn.begin()
        conn.execute(sa.text("SELECT job_id FROM jobs WHERE job_id = :j FOR UPDATE"),
                     {"j": first.job_id})
        with ThreadPoolExecutor(1) as pool:
            claim = pool.submit(jobs.claim, "w2", 30)
            try:
                got = claim.result(timeout=5)  # waiting on the lock would time out here
            finally:
                tx.rollback()  # (and lets a waiting claim finish)
    other.dispose()
    assert got is not None and got.job_id == second.job_id


def test_webhook_bookkeeping(jobs):
    job = new(jobs, start=True, webhook_url="https://hooks.example.com/x", webhook_secret="s")
    jobs.claim("w1", 30)
    jobs.complete(job.job_id, "w1", "k", "image/png", 60)
    [due] = jobs.webhooks.claim(hold_s=30)
    assert due.job_id == job.job_id and due.webhook_state == "pending"
    jobs.webhooks.record(job.job_id, "d1", "job_completed", 1, False, 500, "HTTP 500", 12,
                         next_at=now() + timedelta(seconds=60))
    assert jobs.webhooks.claim(hold_s=30) == []  # not before its next attempt
    jobs.webhooks.record(job.job_id, "d1", "job_completed", 2, True, 200, None, 8, next_at=None)
    assert jobs.get(job.job_id).webhook_state == "delivered"
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in jobs.webhooks.deliveries(job.job_id)] == [
        (1, False, 500), (2, True, 200)]


def test_a_delivery_is_recorded_under_the_id_the_dispatcher_sends(jobs):
    """The dispatcher's delivery id is the job id and the event (50 characters): PostgreSQL
    refused it in a 36-character column, so every delivery's record failed, the webhook stayed
    pending and was sent again each time its claim ran out (found by bench_reliability)."""
    job = new(jobs, start=True, webhook_url="https://hooks.example.com/x")
    jobs.claim("w1", 30)
    jobs.complete(job.job_id, "w1", "k", "image/png", 60)
    assert len(jobs.webhooks.claim(hold_s=0)) == 1
    jobs.webhooks.record(job.job_id, delivery_id(job.job_id, "job_completed"), "job_completed",
                         1, True, 200, None, 8, next_at=None)
    assert jobs.get(job.job_id).webhook_state == "delivered"
    assert jobs.webhooks.claim(hold_s=0) == []  # never sent again
    assert jobs.webhooks.deliveries(job.job_id)[0]["delivery_id"] == f"{job.job_id}-job_completed"


def test_a_database_made_before_a_column_grew_is_widened(postgres_url):
    """A PostgreSQL database created with the old 36-character delivery id column is altered
    when the store opens it (SQLite ignores lengths)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    first = JobStore(url)
    first.close()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute("ALTER TABLE webhook_deliveries ALTER COLUMN delivery_id TYPE VARCHAR(36)")
    second = JobStore(url)
    try:
        job = new(second, start=True, webhook_url="https://hooks.example.com/x")
        second.webhooks.record(job.job_id, delivery_id(job.job_id, "job_completed"),
                               "job_completed", 1, True, 200, None, 8, next_at=None)
        assert second.get(job.job_id).webhook_state == "delivered"
    finally:
        second.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_outputs_are_dropped_once(jobs):
    job = new(jobs, start=True)
    jobs.claim("w1", 30)
    jobs.complete(job.job_id, "w1", "jobs/a/output.png", "image/png", output_ttl_s=0.1)
    time.sleep(0.2)
    assert jobs.expired_outputs() == [job.job_id]
    assert jobs.drop_output(job.job_id) == "jobs/a/output.png"
    assert jobs.drop_output(job.job_id) is None and jobs.expired_outputs() == []


def test_survives_reopening(db_url):
    first = JobStore(db_url)
    job = new(first, start=True)
    first.close()
    second = JobStore(db_url)
    assert second.get(job.job_id).state == PROCESSING
    second.close()


def test_a_due_webhook_is_claimed_by_one_worker_only(jobs):
    job = new(jobs, start=True, webhook_url="https://hooks.example.com/x")
    jobs.claim("w1", 30)
    jobs.complete(job.job_id, "w1", "k", "image/png", 60)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: jobs.webhooks.claim(hold_s=30), range(4)))
    assert sum(len(g) for g in got) == 1
    # a late duplicate report of attempt 1 cannot reopen a delivered webhook
    jobs.webhooks.record(job.job_id, "d", "job_completed", 1, True, 200, None, 5, None)
    jobs.webhooks.record(job.job_id, "d", "job_completed", 1, False, 500, "x", 5,
                         next_at=now())
    assert jobs.get(job.job_id).webhook_state == "delivered"


def test_rows_of_older_versions_read_through_the_one_converter(jobs):
    """Rows written before JobParams: text_prompt kept as the caller's string, a null
    background; the worker sees today's typed record."""
    from sqlalchemy import update

    from serve_app.core.job_schema import jobs as jobs_table
    job = new(jobs)
    old = {"model": "light", "model_id": "u2netp", "output_format": "webp", "background": None,
           "text_prompt": "person, handbag ,", "unknown_old_field": 1}
    with jobs.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job.job_id)
                     .values(params=old))
    params = jobs.get(job.job_id).params
    assert params.text_prompt == ["person", "handbag"] and params.background.type == "transparent"
    assert params.output_format == "webp" and params.model_id == "u2netp"


def test_a_row_no_version_can_read_fails_cleanly_instead_of_breaking_claims(jobs):
    from sqlalchemy import update

    from serve_app.core.job_schema import jobs as jobs_table
    job = new(jobs)
    jobs.start(job.job_id)
    with jobs.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job.job_id)
                     .values(params={"background": {"type": "plaid"}}))
    claimed = jobs.claim("w1", lease_s=30)  # still claimable: the worker fails it with a reason
    assert claimed.job_id == job.job_id
    assert claimed.params.model_id == "(unreadable job parameters)"


def test_a_released_job_waits_then_is_claimed_without_spending_an_attempt(jobs):
    job = new(jobs, start=True)
    other = new(jobs, start=True)
    assert jobs.count_waiting() == 2
    assert jobs.claim("w1", lease_s=30).job_id == job.job_id
    assert jobs.count_waiting() == 1  # a live lease is not waiting
    assert not jobs.release(job.job_id, "w2", "storage down", 0.3)  # not w2's to release
    assert jobs.release(job.job_id, "w1", "the artifact storage cannot be used", 0.3)
    assert not jobs.release(job.job_id, "w1", "again", 0.3)  # no longer w1's
    released = jobs.get(job.job_id)
    assert released.state == PROCESSING and released.attempts == 0 and released.lease_owner is None
    assert jobs.count_waiting() == 1  # held back for retry_in_s: not claimable yet
    assert jobs.claim("w2", lease_s=30).job_id == other.job_id
    assert jobs.claim("w2", lease_s=30) is None
    time.sleep(0.4)
    assert jobs.count_waiting() == 1
    again = jobs.claim("w2", lease_s=30)
    assert again.job_id == job.job_id and again.attempts == 1  # the outage spent no attempt
    assert any("back in the queue, retried in 0.3 s" in e.reason for e in jobs.events(job.job_id))
