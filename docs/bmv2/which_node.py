"""Which node a TCP flow to a Service's VIP lands on, from a snapshot (docs/bmv2.md step 7).

    p4kube audit show --repo AUDIT 1 --out snap.json
    python3 docs/bmv2/which_node.py snap.json web/hello 10.0.1.2 40001

The switch hashes (src IP, VIP, protocol, src port, VIP port) with BMv2's crc32 (zlib's), keeps the
low 16 bits, masks them with bucketCount - 1 (p4/README.md, "The bucket hash") and looks the bucket
up in backend_table.
"""

import ipaddress
import json
import struct
import sys
import zlib
from pathlib import Path

snapshot, service, src, sport = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
snap = json.loads(Path(snapshot).read_text())
svc = next(s for s in snap["services"] if s["name"] == service)
proto = {"TCP": 6, "UDP": 17}[svc["protocol"]]
vip = int(ipaddress.IPv4Address(svc["vip"]))
data = struct.pack(
    "!IIBHH", int(ipaddress.IPv4Address(src)), vip, proto, sport, svc["port"]
)
bucket = (zlib.crc32(data) & 0xFFFF) & (svc["bucketCount"] - 1)
key = {"meta.bucket": bucket, "meta.service_id": svc["serviceId"]}
entry = next(e for e in snap["tables"]["MyIngress.backend_table"] if e["match"] == key)
node = next(
    b["node"]
    for b in svc["backends"]
    if b["backendId"] == entry["params"]["backend_id"]
)
print(
    f"bucket {bucket} of {svc['bucketCount']}: {node} at {entry['params']['node_ip']}:{entry['params']['node_port']}"
)
