"""Built-in Network stage (entry point ``network``)."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
