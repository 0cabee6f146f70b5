"""The hot write path: sensor, log and result batches, stored once per sequence number."""
