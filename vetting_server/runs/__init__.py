"""Runs: compare-and-set transitions, results and judging, agent sessions, reports, the dispatcher and artifacts."""
