"""A veth pair into a fresh network namespace: the project's own test hosts.

    with veth_namespace("10.231.0.1/30", "10.231.0.2/30") as (ns, host_if, ns_if):
        ...  # host_if here (with the first address), ns_if inside ``ns``

    with veth_namespace("10.231.9.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap:
        ...  # a VM on ``tap`` (QEMU run with ``ip netns exec ns``) reaches host_if

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


@contextmanager
def bridged_tap(ns: str, ns_if: str, tap: str = "tap0") -> Iterator[str]:
    """A bridge inside ``ns`` joining ``ns_if`` (the namespace's end of a veth pair from
    :func:`veth_namespace`) and a new tap device for a VM, so the VM's frames come out
    of the pair's other end, where the test's server and dnsmasq listen. Yields the
    tap's name (inside ``ns``: run QEMU with ``ip netns exec``). Removed afterwards
    (deleting the namespace would too)."""
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun is missing: no tap devices here")

    def sh(*argv: str) -> None:
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)

    try:
        sh("link", "add", "br0", "type", "bridge", "forward_delay", "0")
        sh("link", "set", ns_if, "master", "br0")
        sh("tuntap", "add", "dev", tap, "mode", "tap")
        sh("link", "set", tap, "master", "br0")
        for dev in (tap, "br0"):
            sh("link", "set", dev, "up")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a bridge and a tap device here: {exc.stderr.decode().strip()}")
    try:
        yield tap
    finally:
        subprocess.run(["ip", "-n", ns, "link", "del", tap], capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "del", "br0"], capture_output=True)
