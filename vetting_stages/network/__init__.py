"""Built-in Network stage (entry point ``network``), and the iperf3 peers the
orchestrator leases to it: blocking the plugin takes both away."""

from vetting_core import PeerPoolSpec, hookimpl

from .iperf_server import IperfServerPool
from .stage import STAGE


@hookimpl
def vetting_stages():
    return [STAGE]


@hookimpl
def vetting_peer_pools():
    return [PeerPoolSpec(kind="iperf3", factory=IperfServerPool, tool="iperf3",
                         description="one-shot iperf3 servers, one client per port")]
