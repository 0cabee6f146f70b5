"""Built-in CPUStress stage (entry point ``cpu``)."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
