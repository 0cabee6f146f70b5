"""The pure memtester parser, on real captured output (tests/fixtures/memtester/4.6.0)."""

import pytest
from vetting_core.testing import load_capture

from vetting_example.memtester import (
    KNOWN_TESTS,
    apply_backspaces,
    describe_exit,
    parse_memtester,
)

from pathlib import Path

MEMTESTER_FIXTURES = Path(__file__).parent / "fixtures" / "memtester" / "4.6.0"


def parse(case):
    cap = load_capture(MEMTESTER_FIXTURES, case)
    return parse_memtester(cap.stdout, cap.stderr, cap.returncode)


def test_clean_pass_two_loops():
    rep = parse("pass-4m-2loops")
    assert rep.version == "4.6.0"
    assert (rep.wanted_bytes, rep.got_bytes, rep.locked) == (4194304, 4194304, True)
    assert (rep.loops_planned, rep.loops_started) == (2, 2)
    assert [t.name for t in rep.tests] == list(KNOWN_TESTS) * 2
    assert all(t.ok for t in rep.tests)
    assert rep.completed and rep.failure_count == 0
    assert rep.coverage_pct == 100.0
    assert rep.verdict() == (True, None)


def test_exit_zero_after_testing_only_64k_is_visible_in_coverage():
    # memtester shrank the buffer page by page until mlock succeeded, then said ok
    rep = parse("mlock-limit-64k")
    assert rep.returncode == 0
    assert rep.got_bytes == 65536
    assert rep.coverage_pct == pytest.approx(1.5625)
    assert rep.locked is True
    # the parser's verdict is about the tests; coverage is judged by the thresholds
    assert rep.verdict() == (True, None)


def test_mlock_denied_runs_unlocked():
    rep = parse("mlock-denied")
    assert rep.locked is False
    assert rep.coverage_pct == 100.0
    assert rep.verdict()[0] is True


def test_allocation_reduced_by_address_space_limit():
    rep = parse("reduced-ulimit-v")
    assert rep.wanted_bytes == 104857600
    assert rep.got_bytes == 58892288
    assert rep.coverage_pct == pytest.approx(56.164, abs=0.001)


def test_injected_faults_fail_with_every_failure_counted():
    rep = parse("injected")
    assert rep.returncode == 4
    assert describe_exit(4) == "a data test failed"
    assert rep.failure_count == 18
    assert rep.failures[0].startswith("FAILURE: 0x6b6b6b6b6b6b6b6b != 0xff00ff005aa55aa5")
    failed = [t.name for t in rep.failed_tests]
    assert failed[0] == "Block Sequential" and "16-bit Writes" in failed
    assert [t.name for t in rep.passed_tests][:3] == ["Stuck Address", "Random Value", "Compare XOR"]
    ok, reason = rep.verdict()
    assert not ok and reason.startswith("18 memory error(s) reported")


def test_killed_mid_test_is_incomplete_not_a_memory_error():
    rep = parse("killed")
    assert rep.returncode == 137 and not rep.completed
    assert rep.failure_count == 0
    assert rep.interrupted is not None and rep.interrupted.name == "Random Value"
    ok, reason = rep.verdict()
    assert not ok
    assert "stopped before 'Done.'" in reason and "killed during Random Value" in reason
    assert "exit 137" in reason


@pytest.mark.parametrize(
    "case, words",
    [
        ("bad-size", "memory argument too large"),
        ("bad-size-abc", "Usage: memtester"),
        ("usage", "need memory argument"),
    ],
)
def test_refused_to_start(case, words):
    rep = parse(case)
    assert rep.returncode == 1 and rep.wanted_bytes is None
    ok, reason = rep.verdict()
    assert not ok and reason.startswith("memtester did not start") and words in reason


def test_exit_zero_with_failure_lines_still_fails():
    cap = load_capture(MEMTESTER_FIXTURES, "injected")
    rep = parse_memtester(cap.stdout, cap.stderr, 0)  # never trust the exit code
    assert rep.verdict()[0] is False


@pytest.mark.parametrize(
    "stdout",
    ["", "garbage\x00\x01\x02 not memtester at all\n", "\b\b\b\b", "Loop 1/1:\n  Stuck Address : ok\n"],
)
def test_garbage_never_passes_and_never_raises(stdout):
    rep = parse_memtester(stdout, "", 0)
    assert rep.verdict()[0] is False


def test_timed_out_is_said_so():
    cap = load_capture(MEMTESTER_FIXTURES, "killed")
    rep = parse_memtester(cap.stdout, cap.stderr, None, timed_out=True)
    assert "timed out and was killed" in rep.verdict()[1]


def test_failure_lines_kept_are_bounded():
    cap = load_capture(MEMTESTER_FIXTURES, "pass-4m-2loops")
    flood = "".join(f"FAILURE: 0x0 != 0x1 at offset 0x{i:08x}.\n" for i in range(5000))
    rep = parse_memtester(cap.stdout, flood, 4)
    assert rep.failure_count == 5000 and len(rep.failures) == 100


def test_apply_backspaces_keeps_what_a_terminal_shows():
    bs = "\b" * 11
    raw = "  Stuck Address       : " + " " * 11 + bs + "setting   0" + bs + "testing   0" + bs + "ok"
    assert apply_backspaces(raw) == "  Stuck Address       : ok"
    assert apply_backspaces("\b\bx") == "x"


def test_describe_exit_bits():
    assert describe_exit(1) == "did not start"
    assert describe_exit(6) == "address line test failed, a data test failed"
    assert describe_exit(137) == "killed by signal 9"
