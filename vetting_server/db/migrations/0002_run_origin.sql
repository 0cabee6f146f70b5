-- Where a run came from (the command or API request that started it): the real
-- command line of the OCPTV export's testRunStart.
ALTER TABLE runs ADD COLUMN origin TEXT;
