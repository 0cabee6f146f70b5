"""Firmware campaigns: bring hosts to the firmware their spec requires, then vet them.

- :mod:`.redfish`: the built-in ``redfish`` firmware-update provider (entry point
  ``redfish_firmware``);
- :mod:`.plans`: a plan document (targets or selector, artifacts, policy) and its checks;
- :mod:`.states`: the plan and per-host update state machines (one table each);
- :mod:`.store`: plans, targets, artifacts and host updates in the database;
- :mod:`.runner`: the campaign loop (policy: concurrency, window, approval, stop);
- :mod:`.remediation`: "update and re-vet" offered from a failed Firmware stage;
- :mod:`.api` and :mod:`.cli`: the operator's API and ``vetting firmware`` commands.

Like the boot providers, :mod:`.redfish` imports only ``vetting_core``, the standard
library and other plugin modules at import time, so agent-only installs can load
every entry point.
"""
