"""Vetting core: hook specifications, plugin manager, domain model, engines.

Plugin authors need only this package::

    from vetting_core import hookimpl, StageSpec, StageFailed
"""

from ._markers import hookimpl
from .boot import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError
from .context import (
    MemorySink,
    Peer,
    PeerUnavailable,
    Sink,
    StageCannotRun,
    StageContext,
    StageFailed,
    StageHold,
    StageSkipped,
    execute_stage,
)
from .events import RunEvent, RunEventKind
from .firmware import FirmwareImage, FirmwareItem, FirmwareUpdateError, InstallOutcome
from .model import (
    Artifact,
    FirmwareSnapshot,
    Measurement,
    Severity,
    SubStep,
    ThresholdRule,
    Verdict,
)
from .plugins import Registry, create_plugin_manager, load_registry
from .records import (
    BootProviderSpec,
    EventObserverSpec,
    FirmwareProviderSpec,
    NotifierSpec,
    OperatorSpec,
    PeerPoolSpec,
    ProbeSpec,
    ProfileSpec,
    ReportSection,
    ReportSectionSpec,
    StageSpec,
)
from .tools import ToolNotFound, ToolResult, run_tool

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "BmcAuthFailed",
    "BmcRefused",
    "BmcUnreachable",
    "BootError",
    "BootProviderSpec",
    "EventObserverSpec",
    "FirmwareImage",
    "FirmwareItem",
    "FirmwareProviderSpec",
    "FirmwareSnapshot",
    "FirmwareUpdateError",
    "InstallOutcome",
    "Measurement",
    "MemorySink",
    "NotifierSpec",
    "Peer",
    "PeerPoolSpec",
    "PeerUnavailable",
    "OperatorSpec",
    "ProbeSpec",
    "ProfileSpec",
    "Registry",
    "ReportSection",
    "ReportSectionSpec",
    "RunEvent",
    "RunEventKind",
    "Severity",
    "Sink",
    "StageCannotRun",
    "StageContext",
    "StageFailed",
    "StageHold",
    "StageSkipped",
    "StageSpec",
    "SubStep",
    "ThresholdRule",
    "ToolNotFound",
    "ToolResult",
    "Verdict",
    "__version__",
    "create_plugin_manager",
    "execute_stage",
    "hookimpl",
    "load_registry",
    "run_tool",
]
