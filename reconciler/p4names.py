"""Names in p4/load_balancer.p4 that the renderer writes into snapshots.

These are the fully qualified P4Info names (what p4c emits); tests check every one of them
against p4/load_balancer.p4info.txtpb so the two cannot drift apart.
"""

from __future__ import annotations

PROGRAM = "load_balancer.p4"

# Tables
VIP_TABLE = "MyIngress.vip_table"
BACKEND_TABLE = "MyIngress.backend_table"
REVERSE_NAT = "MyIngress.reverse_nat"
IPV4_LPM = "MyIngress.ipv4_lpm"

# Match fields per table, in P4Info order, with their bit widths.
VIP_MATCH = (("hdr.ipv4.dstAddr", 32), ("meta.l4_dst_port", 16), ("hdr.ipv4.protocol", 8))
BACKEND_MATCH = (("meta.service_id", 16), ("meta.bucket", 16))
REVERSE_NAT_MATCH = (("hdr.ipv4.srcAddr", 32), ("meta.l4_src_port", 16), ("hdr.ipv4.protocol", 8))
IPV4_LPM_MATCH = (("hdr.ipv4.dstAddr", 32),)

# Actions and their parameters, in P4Info order, with their bit widths.
SET_SERVICE = "MyIngress.set_service"
SET_SERVICE_PARAMS = (("service_id", 16), ("bucket_mask", 16))
DNAT = "MyIngress.dnat"
DNAT_PARAMS = (("node_ip", 32), ("node_port", 16), ("backend_id", 16))
# A bucket that moved and is draining (DESIGN.md 5.1): the new backend for new connections and
# connections marked new in conn_gen with `generation`, the old backend for everything else.
DNAT_DRAINING = "MyIngress.dnat_draining"
DNAT_DRAINING_PARAMS = (
    ("node_ip", 32),
    ("node_port", 16),
    ("backend_id", 16),
    ("old_node_ip", 32),
    ("old_node_port", 16),
    ("old_backend_id", 16),
    ("generation", 32),
)
SNAT = "MyIngress.snat"
SNAT_PARAMS = (("vip", 32), ("vip_port", 16))
FWD = "MyIngress.fwd"
FWD_PARAMS = (("port", 9), ("dst_mac", 48))
DROP = "MyIngress.drop"
NO_ACTION = "NoAction"

# Per-backend counters, indexed by backend_id.
BACKEND_PACKETS = "MyIngress.backend_packets"
BACKEND_SYN = "MyIngress.backend_syn"
BACKEND_FIN = "MyIngress.backend_fin"

# The draining state: a Bloom filter of new connections whose cells hold the generation of the
# drain that marked them. Managed by the program alone: never read or written over P4Runtime
# (BMv2 answers UNIMPLEMENTED to register RPCs).
CONN_GEN = "MyIngress.conn_gen"
CONN_CELLS = 262144
CONN_GEN_WIDTH = 32

TABLE_ORDER = (VIP_TABLE, BACKEND_TABLE, REVERSE_NAT, IPV4_LPM)

# load_balancer.p4 parses TCP and UDP ports only; SCTP Services stay with kube-proxy.
IP_PROTOCOLS = {"TCP": 6, "UDP": 17}

# Table sizes declared in the program (entries).
TABLE_SIZES = {VIP_TABLE: 16384, BACKEND_TABLE: 524288, REVERSE_NAT: 65536, IPV4_LPM: 1024}
COUNTER_SIZE = 65536
MAX_SERVICE_ID = 0xFFFF
MAX_BACKEND_ID = COUNTER_SIZE - 1
