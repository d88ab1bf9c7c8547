"""Write throughput of the software switch over loopback, in updates per second.

The switch runs in its own process (as the real BMv2 would; a client in the same process would
share its GIL), the client uses finsy's generated P4RuntimeStub directly. Each round writes a
batch of 1000 INSERTs into backend_table, then 1000 MODIFYs and 1000 DELETEs of the same keys;
requests are built before the clock starts (as in fixtures/p4runtime-bmv2/09-batch-timing.txt,
where BMv2 takes ~7-8 ms per 1000-INSERT batch).

    .venv/bin/python bench/bench_sim_writes.py [--rounds 20] [--batch 1000] [--bmv2]

Measured on the 2-core sandbox (grpcio 1.85, Python 3.11), spec and BMv2 mode alike:
about 8.5-9 ms per 1000-INSERT batch, 8 ms per MODIFY batch, 4 ms per DELETE batch, i.e.
110k-120k INSERTs/s and 130k-140k updates/s overall (the target is >= 20k/s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import sys
import time
from pathlib import Path

import grpc
from finsy.proto import p4r, p4r_grpc
from google.protobuf import text_format

P4INFO = Path("/work/shared/fixtures/p4runtime-bmv2/transcript-program.p4info.txtpb")
BACKEND_TABLE = 38914537
DNAT = 25236615
ELECTION_ID = 10


def _serve(conn, bmv2: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from reconciler.sim import SoftwareSwitch

    switch = SoftwareSwitch(bmv2=bmv2)
    conn.send(switch.start("127.0.0.1:0"))
    conn.recv()  # any message: stop
    switch.stop(0)


def _update(kind: int, i: int, node_ip: int) -> p4r.Update:
    update = p4r.Update(type=kind)
    te = update.entity.table_entry
    te.table_id = BACKEND_TABLE
    for field_id, value in ((1, (i >> 16) + 1), (2, i & 0xFFFF)):
        m = te.match.add()
        m.field_id = field_id
        m.exact.value = value.to_bytes(2, "big")
    if kind != p4r.Update.DELETE:
        action = te.action.action
        action.action_id = DNAT
        for param_id, value, width in ((1, node_ip, 4), (2, 30080, 2)):
            p = action.params.add()
            p.param_id = param_id
            p.value = value.to_bytes(width, "big")
    return update


def _batch(kind: int, start: int, size: int, node_ip: int) -> p4r.WriteRequest:
    request = p4r.WriteRequest(device_id=1)
    request.election_id.low = ELECTION_ID
    request.updates.extend(_update(kind, start + i, node_ip) for i in range(size))
    return request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--bmv2", action="store_true", help="run the switch in BMv2 mode")
    args = parser.parse_args(argv)
    if args.batch * args.rounds > 65536:
        parser.error("rounds x batch must fit backend_table (65536 entries)")

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, args.bmv2), daemon=True)
    server.start()
    port = parent.recv()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = p4r_grpc.P4RuntimeStub(channel)
    try:
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        stream = stub.StreamChannel(iter(outbox.get, None))
        request = p4r.StreamMessageRequest()
        request.arbitration.device_id = 1
        request.arbitration.election_id.low = ELECTION_ID
        outbox.put(request)
        answer = next(stream)
        assert answer.arbitration.status.code == 0, answer
        config = p4r.SetForwardingPipelineConfigRequest(
            device_id=1, action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT
        )
        config.election_id.low = ELECTION_ID
        text_format.Parse(P4INFO.read_text(), config.config.p4info)
        stub.SetForwardingPipelineConfig(config)

        kinds = (("INSERT", p4r.Update.INSERT, 0x0A000001), ("MODIFY", p4r.Update.MODIFY,
                 0x0A000002), ("DELETE", p4r.Update.DELETE, 0))
        timings: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
        for rnd in range(args.rounds):
            batches = [(name, _batch(kind, rnd * args.batch, args.batch, ip))
                       for name, kind, ip in kinds]
            for name, batch in batches:
                start = time.perf_counter()
                stub.Write(batch)
                timings[name].append(time.perf_counter() - start)
        total_updates = 3 * args.rounds * args.batch
        total_time = sum(sum(t) for t in timings.values())
        print(f"software switch ({'bmv2' if args.bmv2 else 'spec'} mode), "
              f"{args.rounds} rounds of {args.batch}-update batches over loopback")
        for name, times in timings.items():
            median = statistics.median(times)
            print(f"  {name:6s}: median {median * 1e3:7.2f} ms/batch = "
                  f"{args.batch / median:9.0f} updates/s")
        print(f"  overall: {total_updates / total_time:.0f} updates/s "
              f"({total_updates} updates in {total_time:.2f} s)")
        outbox.put(None)
        stream.cancel()
    finally:
        channel.close()
        parent.send("stop")
        server.join(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
