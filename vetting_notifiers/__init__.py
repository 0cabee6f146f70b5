"""Built-in notifiers (ntfy, Discord, SMTP, signed webhook) and the delivery dispatcher.

Each notifier module is its own plugin (entry points ``ntfy``, ``discord``, ``smtp``,
``webhook`` of the ``vetting`` group) so that one can be blocked by name without the
others. :mod:`vetting_notifiers.dispatch` routes run events to the configured targets
with a timeout, bounded retries and a record of every attempt; it never blocks the
code that publishes the event.

This package imports only ``vetting_core`` (and, lazily, ``httpx`` for the HTTP
notifiers), never the server.
"""
