-- Work units (a source, or one hash partition of it). Documents carry the 60-bit hash of
-- their key, so a partition's rows are one index range scan for any partition count
-- (filled for older rows when the ledger opens). Runs name the worker that ran them, so
-- a run is marked interrupted only when its own worker is gone. source_state is kept per
-- unit (the unit id is the source id when a source is not partitioned) and records the
-- last full scan, which collection it completed in, and the last round's lag.
ALTER TABLE documents ADD COLUMN key_hash BIGINT;
CREATE INDEX documents_key_hash ON documents (source_id, key_hash);
ALTER TABLE runs ADD COLUMN worker TEXT;
ALTER TABLE source_state ADD COLUMN scanned_collection TEXT;
ALTER TABLE source_state ADD COLUMN scan_started_ms BIGINT;
ALTER TABLE source_state ADD COLUMN last_round_ms BIGINT;
ALTER TABLE source_state ADD COLUMN lag_ms BIGINT;

-- Documents a former holder of a unit may have written after losing it (a shared ledger
-- only; kept here too so that both ledgers share one set of queries).
CREATE TABLE repairs (
    source_id   TEXT   NOT NULL,
    doc_key     TEXT   NOT NULL,
    key_hash    BIGINT NOT NULL,
    noted_at    TEXT   NOT NULL,
    PRIMARY KEY (source_id, doc_key)
);
