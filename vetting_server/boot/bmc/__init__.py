"""Boot providers that drive a host's BMC: ``ipmi`` (ipmitool) and ``redfish`` (HTTPS).

Both do the same four things, each through its own protocol: report the power state,
power on (setting a one-time network boot first, and resetting a host that is already
on), power off, and clear the boot override after the verdict. Errors are
:class:`vetting_core.boot.BootError` subclasses (unreachable, authentication failed,
action refused) whose text is the run's reason; transient ones are retried with
backoff. Passwords are referenced (environment variable or file), never stored in the
host's ``boot_config``, never put in an argv or a log line.

Registered through the ``vetting`` entry-point group (entry points ``ipmi`` and
``redfish``). Like :mod:`vetting_server.boot.providers`, these modules import only the standard
library and ``vetting_core`` at import time, so an agent-only install can load every
entry point (the Redfish client imports httpx when it first talks to a BMC).
"""
