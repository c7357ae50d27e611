-- freshet ledger on PostgreSQL, shared by workers: the SQLite ledger's tables
-- (migrations/sqlite, same columns and meaning) plus the leases that give each work unit
-- one holder. Created in the ledger's own schema (`[ledger] schema`, search_path).
--
-- Keys compare bytewise (COLLATE "C"), as in SQLite: scope ranges (`scope/` .. `scope0`)
-- and keyset pagination depend on it.

CREATE TABLE documents (
    source_id         TEXT COLLATE "C" NOT NULL,
    doc_key           TEXT COLLATE "C" NOT NULL,
    version_hint      TEXT    NOT NULL,
    content_hash      TEXT,
    fingerprint       TEXT    NOT NULL,
    status            TEXT    NOT NULL
                      CHECK (status IN ('indexed', 'failed', 'skipped', 'pending', 'quarantined')),
    reason            TEXT,
    media_type        TEXT,
    chunk_count       BIGINT  NOT NULL DEFAULT 0,
    collection        TEXT    NOT NULL DEFAULT '',
    point_ids         TEXT    NOT NULL DEFAULT '[]',
    pending_point_ids TEXT,
    chunk_hashes      TEXT    NOT NULL DEFAULT '[]',
    decode_warning    TEXT,
    first_indexed_at  TEXT,
    updated_at        TEXT    NOT NULL,
    -- first 60 bits of md5(doc_key): partition i of n is a contiguous range of it
    key_hash          BIGINT,
    PRIMARY KEY (source_id, doc_key)
);
CREATE INDEX documents_status ON documents (source_id, status);
CREATE INDEX documents_key_hash ON documents (source_id, key_hash);

CREATE TABLE runs (
    id          BIGINT  PRIMARY KEY,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    status      TEXT    NOT NULL,
    sources     TEXT    NOT NULL,
    stats       TEXT,
    error       TEXT,
    worker      TEXT
);

CREATE TABLE source_state (
    source_id          TEXT COLLATE "C" PRIMARY KEY,
    cursor             TEXT,
    check_report       TEXT,
    checked_at         TEXT,
    scanned_collection TEXT,
    scan_started_ms    BIGINT,
    last_round_ms      BIGINT,
    lag_ms             BIGINT
);

CREATE TABLE collections (
    name         TEXT   PRIMARY KEY,
    model_id     TEXT   NOT NULL,
    dim          BIGINT NOT NULL,
    created_at   TEXT   NOT NULL,
    completed_at TEXT
);

-- One row per work unit ever held. A holder owns the unit while its session holds the
-- unit's advisory lock; `generation` grows at every acquisition and fences commits (a
-- commit checks it under FOR SHARE, so a takeover waits for a commit in flight and a
-- late one from a former holder fails). `worker` is NULL after a clean release.
CREATE TABLE leases (
    unit        TEXT COLLATE "C" PRIMARY KEY,
    generation  BIGINT NOT NULL,
    worker      TEXT,
    host        TEXT,
    pid         BIGINT,
    mode        TEXT,
    since       TEXT
);

-- Documents a former holder may have written after it lost its unit (it learnt so when
-- its fenced commit failed): the next holder re-indexes them.
CREATE TABLE repairs (
    source_id   TEXT COLLATE "C" NOT NULL,
    doc_key     TEXT COLLATE "C" NOT NULL,
    key_hash    BIGINT NOT NULL,
    noted_at    TEXT   NOT NULL,
    PRIMARY KEY (source_id, doc_key)
);
