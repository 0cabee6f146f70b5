"""The plugin module named by the ``vetting`` entry point ``example``.

Registration hooks only *describe* what the plugin offers (cheap, synchronous); the
work happens in the callables the records carry.
"""

from __future__ import annotations

from vetting_core import (
    NotifierSpec,
    ProbeSpec,
    ProfileSpec,
    ReportSectionSpec,
    Severity,
    StageSpec,
    ThresholdRule,
    hookimpl,
)

from . import gotify, memtester, operators, platform_probe, report

MEMTESTER_THRESHOLDS = (
    # any FAILURE line or a test that did not say "ok" fails the stage
    ThresholdRule(kind="memtester", key="errors", op="lte", threshold=0, source="plugin:example"),
    # memtester exits 0 after quietly testing less than asked (mlock limits): catch it
    ThresholdRule(
        kind="memtester", key="coverage_pct", op="between", threshold="99..100", unit="%",
        source="plugin:example",
    ),
    # unlocked memory may be swapped or moved: the result is less trustworthy
    ThresholdRule(
        kind="memtester", key="locked", op="eq", threshold=1, severity=Severity.warning,
        source="plugin:example",
    ),
)

MEMTESTER = StageSpec(
    name="Memtester",
    order=460,  # after the built-in Memory stage (450), before Storage (500)
    run=memtester.run_memtester,
    description="userspace RAM test with memtester, sized to what can be locked safely",
    params={
        "*": dict(memtester.DEFAULT_PARAMS),
        "deep": {"mib": "auto", "loops": 2, "workers": "auto"},
        "soak": {"mib": "auto", "loops": 10, "workers": "auto"},
    },
    thresholds=MEMTESTER_THRESHOLDS,
    # not in "quick": a useful memtest takes minutes; "quick-memtest" adds it
    profiles=("deep", "soak"),
    timeout_s=4 * 3600.0,
)


@hookimpl
def vetting_stages():
    return [MEMTESTER]


@hookimpl
def vetting_probes():
    return [
        ProbeSpec(
            name="platform",
            collect=platform_probe.collect_platform,
            sections=("boot", "kernel"),
            description="boot mode (UEFI/BIOS, secure boot) and kernel taint (machine checks)",
            timeout_s=10.0,
        )
    ]


@hookimpl
def vetting_threshold_operators():
    return [operators.BETWEEN]


@hookimpl
def vetting_profiles():
    return [
        ProfileSpec(
            name="quick-memtest",
            extends="quick",
            include=("Memtester",),
            description="quick, plus a 256 MiB memtester pass",
        ),
        # deep locks most of the memory: make sure it really did
        ProfileSpec(
            name="deep",
            fragment=True,
            thresholds=[
                ThresholdRule(
                    stage="Memtester", kind="memtester", key="pct_of_available", op="between",
                    threshold="50..95", unit="%", severity=Severity.warning, source="plugin:example",
                )
            ],
        ),
    ]


@hookimpl
def vetting_notifiers():
    return [
        NotifierSpec(
            kind="gotify",
            factory=gotify.GotifyNotifier,
            config_type=gotify.GotifyConfig,
            description="push run events to a Gotify server",
        )
    ]


@hookimpl
def vetting_report_sections():
    return [ReportSectionSpec(name="memtester", render=report.render, order=460)]
