-- freshet ledger: what the index holds for every source document, and one row per run.
-- Written in SQL that SQLite and PostgreSQL both accept.

CREATE TABLE documents (
    source_id        TEXT    NOT NULL,
    doc_key          TEXT    NOT NULL,
    -- cheap version hint from the source (mtime+ctime+size+inode, ETag, updated_at)
    version_hint     TEXT    NOT NULL,
    -- blake3 of the bytes; NULL when the document was never read (skipped by name, too large)
    content_hash     TEXT,
    -- extractor, chunker, model id and dimension that produced the points
    fingerprint      TEXT    NOT NULL,
    -- pending: a write of this document's points is in flight (the ledger protocol's
    -- intent record); its points may be any of point_ids and pending_point_ids
    status           TEXT    NOT NULL CHECK (status IN ('indexed', 'failed', 'skipped', 'pending')),
    reason           TEXT,
    media_type       TEXT,
    chunk_count      BIGINT  NOT NULL DEFAULT 0,
    -- the vector store collection point_ids live in
    collection       TEXT    NOT NULL DEFAULT '',
    -- JSON array of the point ids the store holds for this document
    point_ids        TEXT    NOT NULL DEFAULT '[]',
    -- JSON array of point ids being written while status is pending
    pending_point_ids TEXT,
    -- JSON array of chunk hashes, parallel to point_ids
    chunk_hashes     TEXT    NOT NULL DEFAULT '[]',
    decode_warning   TEXT,
    first_indexed_at TEXT,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (source_id, doc_key)
);

CREATE INDEX documents_status ON documents (source_id, status);

CREATE TABLE runs (
    id          BIGINT  PRIMARY KEY,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    -- running | completed | completed_with_failures | failed | interrupted
    status      TEXT    NOT NULL,
    sources     TEXT    NOT NULL,
    -- JSON run statistics
    stats       TEXT,
    error       TEXT
);
