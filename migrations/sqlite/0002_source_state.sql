-- Per-source state beside the documents: the committed change-tracking cursor (advanced
-- only after a scan's round completed) and the latest data-quality check report.
CREATE TABLE source_state (
    source_id    TEXT PRIMARY KEY,
    -- opaque to the ledger; the source ties it to its query
    cursor       TEXT,
    -- JSON CheckReport of the latest scan that ran checks
    check_report TEXT,
    checked_at   TEXT
);

-- Rows set aside by a source's data-quality checks get their own status. The CHECK
-- constraint is part of the table, so the table is rebuilt (SQLite cannot alter it).
CREATE TABLE documents_v2 (
    source_id        TEXT    NOT NULL,
    doc_key          TEXT    NOT NULL,
    version_hint     TEXT    NOT NULL,
    content_hash     TEXT,
    fingerprint      TEXT    NOT NULL,
    -- quarantined: the source's checks set it aside; its last good points stay served
    status           TEXT    NOT NULL
                     CHECK (status IN ('indexed', 'failed', 'skipped', 'pending', 'quarantined')),
    reason           TEXT,
    media_type       TEXT,
    chunk_count      BIGINT  NOT NULL DEFAULT 0,
    collection       TEXT    NOT NULL DEFAULT '',
    point_ids        TEXT    NOT NULL DEFAULT '[]',
    pending_point_ids TEXT,
    chunk_hashes     TEXT    NOT NULL DEFAULT '[]',
    decode_warning   TEXT,
    first_indexed_at TEXT,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (source_id, doc_key)
);
INSERT INTO documents_v2 SELECT * FROM documents;
DROP TABLE documents;
ALTER TABLE documents_v2 RENAME TO documents;
CREATE INDEX documents_status ON documents (source_id, status);
