"""Hosts: their input rules (:mod:`.rules`) and the service that registers, changes and deletes them (:mod:`.service`)."""
