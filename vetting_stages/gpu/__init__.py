"""Built-in GPU stage (entry point ``gpu``). NVML through the optional ``vetting[gpu]``
extra (nvidia-ml-py); the built-in burner needs torch or cupy."""

from vetting_core import hookimpl

from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]
