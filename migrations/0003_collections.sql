-- The collections the ledger's rows point into, one per model. completed_at is set when a
-- sync of every source first completed into the collection: until then a first build is
-- "partial" (published at once so that applications can query it as it fills).
CREATE TABLE collections (
    name         TEXT   PRIMARY KEY,
    model_id     TEXT   NOT NULL,
    dim          BIGINT NOT NULL,
    created_at   TEXT   NOT NULL,
    completed_at TEXT
);
