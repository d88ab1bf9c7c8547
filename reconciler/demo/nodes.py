"""The nodes' stand-ins: a TCP listener on every (node IP, nodePort) on loopback, which is what
the health probes connect to, and the recorded cluster's nodes moved onto those addresses."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
from collections.abc import Mapping, Sequence

from ..cluster.model import ClusterState
from .errors import DemoFailed

NODE_HOST = 11  # node-a -> 127.0.0.11, node-b -> 127.0.0.12, ...


class NodeListeners:
    """A TCP listener on every (node IP, nodePort): what the health probes connect to. A listener
    accepts and closes at once, like a node whose kube-proxy forwards to a healthy pod."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}

    async def up(self, host: str, port: int) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        try:
            self.servers[(host, port)] = await asyncio.start_server(answer, host, port, reuse_address=True)
        except OSError as e:
            hint = ""
            if e.errno == errno.EADDRNOTAVAIL:  # only 127.0.0.1 exists on this loopback (macOS)
                hint = f" (this system needs a loopback alias for {host}, e.g. `sudo ifconfig lo0 alias {host} up`)"
            raise DemoFailed(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from e

    async def down(self, host: str, port: int) -> None:
        server = self.servers.pop((host, port))
        server.close()
        await server.wait_closed()

    async def close(self) -> None:
        for key in list(self.servers):
            await self.down(*key)


async def listen_on_a_free_block(
    listeners: NodeListeners, names: Sequence[str], ports: Sequence[int]
) -> dict[str, str]:
    """Node name -> loopback IP: 127.0.0.11.. unless a nodePort is taken there (another demo
    running?), then 127.0.1.11.., and so on."""
    last: DemoFailed | None = None
    for third in range(10):
        ips = {name: f"127.0.{third}.{NODE_HOST + i}" for i, name in enumerate(names)}
        try:
            for host in ips.values():
                for port in ports:
                    await listeners.up(host, port)
            return ips
        except DemoFailed as e:
            last = e
            await listeners.close()
    raise DemoFailed(f"no free loopback block for the nodes: {last}")


def on_loopback(state: ClusterState, ips: Mapping[str, str]) -> ClusterState:
    """The cluster with each node's internal IP replaced by its listener's loopback address."""
    nodes = {name: dataclasses.replace(node, internal_ip=ips[name]) for name, node in state.nodes.items()}
    return dataclasses.replace(state, nodes=nodes)


def tcp_node_ports(state: ClusterState) -> list[int]:
    """The nodePorts of the opted-in TCP Services (what the probes reach on each node)."""
    return sorted({
        p.node_port for s in state.services.values() if s.opt_in == "enabled"
        for p in s.ports if p.protocol == "TCP" and p.node_port
    })


__all__ = ["NodeListeners", "listen_on_a_free_block", "on_loopback", "tcp_node_ports"]
