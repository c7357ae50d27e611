-- Documents carried inside another (an email's attachments) have rows of their own, keyed
-- `<parent key>/<attachment name>`, that name their parent. They share its partition
-- (their key_hash is the parent's), are written and removed in the same transactions as
-- the parent's row, and are never swept on their own: a scan reports the parent only.
ALTER TABLE documents ADD COLUMN parent_key TEXT;
CREATE INDEX documents_parent ON documents (source_id, parent_key);
