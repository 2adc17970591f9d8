"""The warehouse schema: the event log, what was rejected, and access control.

Timestamps are stored as UTC without a zone (``TIMESTAMP``), so that DuckDB and Spark read the
same values. JSON columns hold the spec's nested objects as text.
"""

from __future__ import annotations

SCHEMA_VERSION = 3

# Version 2: events lost their stored ``fingerprint`` (computed when a duplicate needs it).
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (2, ("ALTER TABLE events DROP COLUMN IF EXISTS fingerprint",)),
    # Version 3: a survey trigger remembers the identity log entry it evaluated through, so
    # an unmerge since is followed (survey_triggers.py).
    (3, ("ALTER TABLE IF EXISTS survey_triggers ADD COLUMN IF NOT EXISTS evaluated_log BIGINT",)),
)

DDL: tuple[str, ...] = (
    "CREATE SEQUENCE IF NOT EXISTS load_seq START 1",
    "CREATE SEQUENCE IF NOT EXISTS failure_seq START 1",
    """CREATE TABLE IF NOT EXISTS meta (
        key VARCHAR PRIMARY KEY, value VARCHAR)""",
    # One row per ingest transaction: the pipeline's incremental cursor (load_id) lives here.
    """CREATE TABLE IF NOT EXISTS loads (
        load_id BIGINT PRIMARY KEY, origin VARCHAR, started_at TIMESTAMP,
        accepted BIGINT, duplicates BIGINT, conflicts BIGINT, failed BIGINT, file VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS events (
        message_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        type VARCHAR NOT NULL,
        event VARCHAR,
        name VARCHAR,
        anonymous_id VARCHAR,
        user_id VARCHAR,
        group_id VARCHAR,
        previous_id VARCHAR,
        timestamp TIMESTAMP NOT NULL,
        original_timestamp TIMESTAMP,
        sent_at TIMESTAMP,
        received_at TIMESTAMP NOT NULL,
        properties JSON,
        traits JSON,
        context JSON,
        integrations JSON,
        key UBIGINT NOT NULL,
        load_id BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS failed_events (
        failure_id BIGINT PRIMARY KEY DEFAULT nextval('failure_seq'),
        load_id BIGINT,
        source VARCHAR,
        origin VARCHAR,
        call VARCHAR,
        received_at TIMESTAMP,
        file VARCHAR,
        position BIGINT,
        message_id VARCHAR,
        reasons VARCHAR[],
        raw VARCHAR,
        status VARCHAR DEFAULT 'failed',
        replayed_at TIMESTAMP,
        replay_load_id BIGINT)""",
    """CREATE TABLE IF NOT EXISTS sources (
        name VARCHAR PRIMARY KEY, created_at TIMESTAMP, description VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS write_keys (
        key_hash VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, prefix VARCHAR,
        created_at TIMESTAMP, revoked_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_hash VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, prefix VARCHAR,
        created_at TIMESTAMP, revoked_at TIMESTAMP)""",
    # Saved cohorts (journeys), the audiences of survey sends.
    """CREATE TABLE IF NOT EXISTS cohorts (
        name VARCHAR PRIMARY KEY, definition JSON, engine VARCHAR, entered BIGINT,
        persons BIGINT, saved_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS cohort_members (
        name VARCHAR, person_id VARCHAR, entered_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        session_hash VARCHAR PRIMARY KEY, token_hash VARCHAR NOT NULL,
        created_at TIMESTAMP, expires_at TIMESTAMP)""",
)
