"""Runs: compare-and-set transitions, results and judging, agent sessions, reports, the dispatcher, artifacts and the operator's listings."""
