-- Documents carried inside another (an email's attachments): see
-- migrations/sqlite/0005_attachments.sql.
ALTER TABLE documents ADD COLUMN parent_key TEXT COLLATE "C";
CREATE INDEX documents_parent ON documents (source_id, parent_key);
