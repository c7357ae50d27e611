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

-- Collections that documents already point into were built before this table existed:
-- they count as complete (their model is not recorded here; the store knows it).
INSERT INTO collections (name, model_id, dim, created_at, completed_at)
SELECT DISTINCT collection, '', 0, updated_at_min, updated_at_min
FROM (
    SELECT collection, MIN(updated_at) AS updated_at_min
    FROM documents WHERE collection <> '' GROUP BY collection
) AS known;
