"""OOM-safe sizing and the command line."""

import shutil

import pytest

from vetting_example.memtester import SizingError, memtester_argv, parse_meminfo, plan_size

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

MEMINFO = parse_meminfo((FIXTURES / "proc" / "meminfo-24g-vm.txt").read_text())
AVAILABLE_MIB = MEMINFO["MemAvailable"] // 1024


def test_meminfo_parsed_in_kib():
    assert MEMINFO["MemTotal"] == 24684084
    assert AVAILABLE_MIB == 23496


def test_small_request_is_kept():
    plan = plan_size(MEMINFO, requested_mib=256)
    assert (plan.per_worker_mib, plan.workers, plan.capped) == (256, 1, False)


def test_auto_takes_the_budget_and_leaves_the_reserve():
    plan = plan_size(MEMINFO, requested_mib=None, max_fraction=0.9, reserve_mib=512)
    assert plan.total_mib == int((AVAILABLE_MIB - 512) * 0.9)
    assert plan.total_mib < AVAILABLE_MIB - 512


def test_a_request_larger_than_the_machine_is_capped():
    plan = plan_size(MEMINFO, requested_mib=1 << 20)
    assert plan.capped and plan.total_mib == int((AVAILABLE_MIB - 512) * 0.9)


def test_split_over_workers():
    plan = plan_size(MEMINFO, requested_mib=1000, workers=3)
    assert plan.per_worker_mib == 333 and plan.total_mib == 999


def test_too_little_memory_is_an_error_with_the_numbers():
    tiny = {"MemTotal": 1048576, "MemAvailable": 600 * 1024}
    with pytest.raises(SizingError, match=r"only 600 MiB available .* 79 MiB per worker is below the minimum of 128 MiB"):
        plan_size(tiny, requested_mib=None, min_mib=128)


def test_old_kernel_without_memavailable():
    with pytest.raises(SizingError, match="MemAvailable"):
        plan_size({"MemTotal": 1}, requested_mib=4)


@pytest.mark.parametrize("kw", [{"max_fraction": 0}, {"max_fraction": 1.5}, {"workers": 0}])
def test_bad_sizing_parameters(kw):
    with pytest.raises(SizingError):
        plan_size(MEMINFO, requested_mib=4, **kw)


def test_argv():
    assert memtester_argv(256, 2, oom_guard=False) == ["memtester", "256M", "2"]
    guarded = memtester_argv(256, 1, oom_guard=True)
    if shutil.which("choom"):
        assert guarded == ["choom", "-n", "1000", "--", "memtester", "256M", "1"]
    else:
        assert guarded == ["memtester", "256M", "1"]


@pytest.mark.parametrize("mib, loops", [(0, 1), (4, 0)])
def test_argv_refuses_nonsense(mib, loops):
    with pytest.raises(ValueError):
        memtester_argv(mib, loops)
