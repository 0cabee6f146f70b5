"""Built-in PSU stage (entry point ``psu``)."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
