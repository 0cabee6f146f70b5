"""Built-in Memory stage (entry point ``memory``)."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
