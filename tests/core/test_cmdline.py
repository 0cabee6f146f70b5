"""The run origin's command line: what reports show of the command that started a run."""

from __future__ import annotations

from vetting_core.cmdline import command_line


def test_command_line_redacts_secrets_and_quotes_the_rest():
    assert command_line(["/usr/bin/vetting", "run", "start", "n1", "--token", "vo_abc"]) == "vetting run start n1 --token ***"
    assert command_line(["vetting-agent", "connect", "--token=vr_x", "--server", "http://a b", "--password"]) == (
        "vetting-agent connect --token=*** --server 'http://a b' --password"
    )
    assert "vo_abc" not in command_line(["vetting", "--token", "vo_abc", "--password", "hunter2"])
    assert len(command_line(["vetting", "x" * 5000])) == 1000
