"""Built-in Burn stage (entry point ``burn``)."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
