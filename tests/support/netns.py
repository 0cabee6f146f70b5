"""A veth pair into a fresh network namespace: the project's own test hosts.

    with veth_namespace("10.231.0.1/30", "10.231.0.2/30") as (ns, host_if, ns_if):
        ...  # host_if here (with the first address), ns_if inside ``ns``

Needs root (and the kernel's consent); skips with the reason otherwise. Names are
random, so concurrent tests never collide, and everything is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def veth_namespace(host_addr: str, ns_addr: str | None = None) -> Iterator[tuple[str, str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"vt{tag}", f"vh{tag}", f"vp{tag}"

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", host_addr, "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        if ns_addr:
            sh("ip", "-n", ns, "addr", "add", ns_addr, "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        pytest.skip(f"cannot create a veth pair here: {exc.stderr.decode().strip()}")
    try:
        yield ns, host_if, ns_if
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
