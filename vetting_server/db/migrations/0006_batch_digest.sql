-- Version 6 (after main's 0002, 0003, 0005): a batch's content digest (issue 18). The same (run, stream, seq) with a
-- different digest is refused with 409 instead of being acknowledged as a retry.
-- Batches stored before this version have none and keep being treated as retries.
ALTER TABLE batches ADD COLUMN digest TEXT;
