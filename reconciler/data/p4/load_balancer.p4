/* -*- P4_16 -*- */
/*
 * P4Kube L4 load balancer (v1model).
 *
 * A packet to a Service VIP (vip_table) is mapped to one of the Service's buckets by a CRC32
 * hash of its 5-tuple; the bucket (backend_table) names the worker node that receives the flow,
 * and the packet is DNATed to that node. Replies from a node (reverse_nat) are SNATed back to
 * the VIP. Everything is then routed on the (possibly rewritten) IPv4 destination (ipv4_lpm).
 *
 * A bucket that moves drains (backend_table's dnat_draining, DESIGN.md 5.1): new TCP connections
 * go to the new backend and are marked in conn_gen, a Bloom filter whose cells hold the drain's
 * generation; every other packet of the bucket goes to the old backend unless its connection is
 * marked in this generation. docs/dataplane.md explains the state, its sizes and its limits.
 *
 * The control plane contract (names, widths, sizes) is reconciler/p4names.py and
 * p4/load_balancer.p4info.txtpb; the exact packet semantics, including the hash input layout,
 * are written down in p4/README.md for the Python model in reconciler/sim/.
 */
#include <core.p4>
#include <v1model.p4>

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<8>  IP_PROTO_TCP = 6;
const bit<8>  IP_PROTO_UDP = 17;

/* TCP control bits (the 8-bit flags field: CWR ECE URG ACK PSH RST SYN FIN). */
const bit<8> TCP_FIN = 0x01;
const bit<8> TCP_SYN = 0x02;
const bit<8> TCP_RST = 0x04;
const bit<8> TCP_ACK = 0x10;

/* Per-backend counter cells, indexed by dnat's backend_id (p4names.COUNTER_SIZE). */
const bit<32> COUNTER_SIZE = 65536;

/* hash() writes base + (crc32 % HASH_MAX): the low 16 bits of the CRC. */
const bit<32> HASH_MAX = 65536;

/* conn_gen cells (p4names.CONN_CELLS): 2^18 x bit<32> = 1 MiB of register memory; the two
 * connection hashes are the low 18 bits of their CRCs. */
const bit<32> CONN_CELLS = 262144;

error {
    IPv4BadVersion,
    IPv4OptionsNotSupported
}

/*************************************************************************
 ***************************** H E A D E R S *****************************
 *************************************************************************/

header ethernet_t {
    bit<48> dstAddr;
    bit<48> srcAddr;
    bit<16> etherType;
}

/* The fixed 20-byte IPv4 header: packets with options (ihl != 5) are rejected by the parser
 * and dropped by the ingress (see p4/README.md). */
header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> totalLen;
    bit<16> identification;
    bit<3>  flags;
    bit<13> fragOffset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdrChecksum;
    bit<32> srcAddr;
    bit<32> dstAddr;
}

/* The fixed 20-byte TCP header; TCP options stay in the unparsed payload, which the
 * deparser re-emits untouched and update_checksum_with_payload covers. */
header tcp_t {
    bit<16> srcPort;
    bit<16> dstPort;
    bit<32> seqNo;
    bit<32> ackNo;
    bit<4>  dataOffset;
    bit<4>  res;
    bit<8>  flags;
    bit<16> window;
    bit<16> checksum;
    bit<16> urgentPtr;
}

header udp_t {
    bit<16> srcPort;
    bit<16> dstPort;
    bit<16> len;
    bit<16> checksum;
}

struct headers {
    ethernet_t ethernet;
    ipv4_t     ipv4;
    tcp_t      tcp;
    udp_t      udp;
}

struct metadata {
    bit<16> l4_src_port;   /* from tcp or udp; 0 when neither was parsed */
    bit<16> l4_dst_port;   /* from tcp or udp; 0 when neither was parsed */
    bit<16> service_id;    /* set_service */
    bit<16> bucket_mask;   /* set_service: bucketCount - 1 */
    bit<16> bucket;        /* hash of the 5-tuple & bucket_mask */
    bit<16> backend_id;    /* dnat: index of the backend's counters */
    bit<16> l4_len;        /* IPv4 payload length, for the TCP/UDP pseudo header */
    /* dnat_draining's parameters, applied in the apply block once the connection is known. */
    bit<1>  draining;      /* the bucket's entry is dnat_draining */
    bit<32> new_node_ip;
    bit<16> new_node_port;
    bit<16> new_backend_id;
    bit<32> old_node_ip;
    bit<16> old_node_port;
    bit<16> old_backend_id;
    bit<32> generation;    /* the drain's generation, never 0 */
    bit<32> conn_idx_a;    /* the connection's two conn_gen cells */
    bit<32> conn_idx_b;
    bit<32> conn_gen_a;    /* what the cells hold */
    bit<32> conn_gen_b;
    bit<1>  conn_new;      /* the connection was opened during this drain: the new backend */
}

/*************************************************************************
 ******************************* P A R S E R *****************************
 *************************************************************************/

parser MyParser(packet_in packet,
                out headers hdr,
                inout metadata meta,
                inout standard_metadata_t standard_metadata) {

    state start {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.etherType) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }

    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        verify(hdr.ipv4.version == 4w4, error.IPv4BadVersion);
        verify(hdr.ipv4.ihl == 4w5, error.IPv4OptionsNotSupported);
        meta.l4_len = hdr.ipv4.totalLen - 16w20;
        /* Only unfragmented packets carry a whole L4 header and payload: a fragment (MF set
         * or a non-zero offset) is routed without load balancing or NAT. */
        transition select(hdr.ipv4.flags, hdr.ipv4.fragOffset, hdr.ipv4.protocol) {
            (3w0 &&& 3w1, 13w0, IP_PROTO_TCP): parse_tcp;
            (3w0 &&& 3w1, 13w0, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }

    state parse_tcp {
        packet.extract(hdr.tcp);
        meta.l4_src_port = hdr.tcp.srcPort;
        meta.l4_dst_port = hdr.tcp.dstPort;
        transition accept;
    }

    state parse_udp {
        packet.extract(hdr.udp);
        meta.l4_src_port = hdr.udp.srcPort;
        meta.l4_dst_port = hdr.udp.dstPort;
        transition accept;
    }
}

/*************************************************************************
 ************   C H E C K S U M    V E R I F I C A T I O N   *************
 *************************************************************************/

control MyVerifyChecksum(inout headers hdr, inout metadata meta) {
    apply { }
}

/*************************************************************************
 **************  I N G R E S S   P R O C E S S I N G   *******************
 *************************************************************************/

control MyIngress(inout headers hdr,
                  inout metadata meta,
                  inout standard_metadata_t standard_metadata) {

    counter(COUNTER_SIZE, CounterType.packets_and_bytes) backend_packets;
    counter(COUNTER_SIZE, CounterType.packets) backend_syn;
    counter(COUNTER_SIZE, CounterType.packets) backend_fin;

    /* A Bloom filter of the connections opened during a drain (2 hashes). A cell holds the
     * generation of the drain that last marked it; cells start at 0 and generations are never 0,
     * so a drain ignores older drains' marks without anyone resetting the register (BMv2 has no
     * P4Runtime register writes). */
    register<bit<32>>(CONN_CELLS) conn_gen;

    action set_service(bit<16> service_id, bit<16> bucket_mask) {
        meta.service_id = service_id;
        meta.bucket_mask = bucket_mask;
    }

    /* The L4 port is rewritten in metadata here and copied into tcp/udp at the end of the
     * apply block, so the action needs no conditional on header validity. */
    action dnat(bit<32> node_ip, bit<16> node_port, bit<16> backend_id) {
        hdr.ipv4.dstAddr = node_ip;
        meta.l4_dst_port = node_port;
        meta.backend_id = backend_id;
        backend_packets.count((bit<32>)backend_id);
    }

    /* A draining bucket: only remembers both backends. The choice needs the connection's
     * conn_gen cells, hashed from the packet as it arrived, so the rewrite (the same as dnat's)
     * is done in the apply block. */
    action dnat_draining(bit<32> node_ip, bit<16> node_port, bit<16> backend_id,
                         bit<32> old_node_ip, bit<16> old_node_port, bit<16> old_backend_id,
                         bit<32> generation) {
        meta.draining = 1w1;
        meta.new_node_ip = node_ip;
        meta.new_node_port = node_port;
        meta.new_backend_id = backend_id;
        meta.old_node_ip = old_node_ip;
        meta.old_node_port = old_node_port;
        meta.old_backend_id = old_backend_id;
        meta.generation = generation;
    }

    action snat(bit<32> vip, bit<16> vip_port) {
        hdr.ipv4.srcAddr = vip;
        meta.l4_src_port = vip_port;
    }

    action fwd(bit<9> port, bit<48> dst_mac) {
        standard_metadata.egress_spec = port;
        hdr.ethernet.dstAddr = dst_mac;
        hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
    }

    action drop() {
        mark_to_drop(standard_metadata);
    }

    table vip_table {
        key = {
            hdr.ipv4.dstAddr: exact;
            meta.l4_dst_port: exact;
            hdr.ipv4.protocol: exact;
        }
        actions = {
            set_service;
            NoAction;
        }
        size = 16384;
        default_action = NoAction();
    }

    table backend_table {
        key = {
            meta.service_id: exact;
            meta.bucket: exact;
        }
        actions = {
            dnat;
            dnat_draining;
            NoAction;
        }
        size = 524288;
        default_action = NoAction();
    }

    table reverse_nat {
        key = {
            hdr.ipv4.srcAddr: exact;
            meta.l4_src_port: exact;
            hdr.ipv4.protocol: exact;
        }
        actions = {
            snat;
            NoAction;
        }
        size = 65536;
        default_action = NoAction();
    }

    table ipv4_lpm {
        key = {
            hdr.ipv4.dstAddr: lpm;
        }
        actions = {
            fwd;
            drop;
        }
        size = 1024;
        default_action = drop();
    }

    apply {
        if (hdr.ipv4.isValid() && standard_metadata.parser_error == error.NoError) {
            if (!reverse_nat.apply().hit) {
                if (vip_table.apply().hit) {
                    /* Input layout (13 bytes, big-endian): see p4/README.md. */
                    hash(meta.bucket,
                         HashAlgorithm.crc32,
                         16w0,
                         { hdr.ipv4.srcAddr,
                           hdr.ipv4.dstAddr,
                           hdr.ipv4.protocol,
                           meta.l4_src_port,
                           meta.l4_dst_port },
                         HASH_MAX);
                    meta.bucket = meta.bucket & meta.bucket_mask;
                    if (backend_table.apply().hit) {
                        if (meta.draining == 1w1) {
                            /* Old backend unless the connection is new in this drain. UDP shows
                             * no connection start: it stays on the old backend for the drain. */
                            if (hdr.tcp.isValid()) {
                                /* Two field orders of the same 13 bytes (not one order with two
                                 * salts: CRC is linear); layouts in p4/README.md. */
                                hash(meta.conn_idx_a,
                                     HashAlgorithm.crc32,
                                     32w0,
                                     { meta.l4_dst_port,
                                       meta.l4_src_port,
                                       hdr.ipv4.protocol,
                                       hdr.ipv4.dstAddr,
                                       hdr.ipv4.srcAddr },
                                     CONN_CELLS);
                                hash(meta.conn_idx_b,
                                     HashAlgorithm.crc32,
                                     32w0,
                                     { hdr.ipv4.srcAddr,
                                       meta.l4_src_port,
                                       hdr.ipv4.dstAddr,
                                       meta.l4_dst_port,
                                       hdr.ipv4.protocol },
                                     CONN_CELLS);
                                if ((hdr.tcp.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
                                    conn_gen.write(meta.conn_idx_a, meta.generation);
                                    conn_gen.write(meta.conn_idx_b, meta.generation);
                                    meta.conn_new = 1w1;
                                } else {
                                    conn_gen.read(meta.conn_gen_a, meta.conn_idx_a);
                                    conn_gen.read(meta.conn_gen_b, meta.conn_idx_b);
                                    if (meta.conn_gen_a == meta.generation &&
                                        meta.conn_gen_b == meta.generation) {
                                        meta.conn_new = 1w1;
                                    }
                                }
                            }
                            /* The same rewrite and count as dnat, on the chosen backend. */
                            if (meta.conn_new == 1w1) {
                                hdr.ipv4.dstAddr = meta.new_node_ip;
                                meta.l4_dst_port = meta.new_node_port;
                                meta.backend_id = meta.new_backend_id;
                            } else {
                                hdr.ipv4.dstAddr = meta.old_node_ip;
                                meta.l4_dst_port = meta.old_node_port;
                                meta.backend_id = meta.old_backend_id;
                            }
                            backend_packets.count((bit<32>)meta.backend_id);
                        }
                        /* Connection estimate for least-connections: SYN without ACK opens,
                         * FIN or RST closes. */
                        if (hdr.tcp.isValid() && (hdr.tcp.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
                            backend_syn.count((bit<32>)meta.backend_id);
                        }
                        if (hdr.tcp.isValid() && (hdr.tcp.flags & (TCP_FIN | TCP_RST)) != 8w0) {
                            backend_fin.count((bit<32>)meta.backend_id);
                        }
                    }
                }
            }
            /* Write the (possibly NATed) ports back into whichever L4 header was parsed. */
            if (hdr.tcp.isValid()) {
                hdr.tcp.srcPort = meta.l4_src_port;
                hdr.tcp.dstPort = meta.l4_dst_port;
            } else if (hdr.udp.isValid()) {
                hdr.udp.srcPort = meta.l4_src_port;
                hdr.udp.dstPort = meta.l4_dst_port;
            }
            ipv4_lpm.apply();
        } else {
            drop();
        }
    }
}

/*************************************************************************
 ****************  E G R E S S   P R O C E S S I N G   *******************
 *************************************************************************/

control MyEgress(inout headers hdr,
                 inout metadata meta,
                 inout standard_metadata_t standard_metadata) {
    apply { }
}

/*************************************************************************
 *************   C H E C K S U M    C O M P U T A T I O N   **************
 *************************************************************************/

control MyComputeChecksum(inout headers hdr, inout metadata meta) {
    apply {
        update_checksum(
            hdr.ipv4.isValid(),
            { hdr.ipv4.version,
              hdr.ipv4.ihl,
              hdr.ipv4.diffserv,
              hdr.ipv4.totalLen,
              hdr.ipv4.identification,
              hdr.ipv4.flags,
              hdr.ipv4.fragOffset,
              hdr.ipv4.ttl,
              hdr.ipv4.protocol,
              hdr.ipv4.srcAddr,
              hdr.ipv4.dstAddr },
            hdr.ipv4.hdrChecksum,
            HashAlgorithm.csum16);

        /* Pseudo header (src, dst, zero, protocol, L4 length), the TCP header without its
         * checksum, then the payload (TCP options and data). */
        update_checksum_with_payload(
            hdr.tcp.isValid(),
            { hdr.ipv4.srcAddr,
              hdr.ipv4.dstAddr,
              8w0,
              hdr.ipv4.protocol,
              meta.l4_len,
              hdr.tcp.srcPort,
              hdr.tcp.dstPort,
              hdr.tcp.seqNo,
              hdr.tcp.ackNo,
              hdr.tcp.dataOffset,
              hdr.tcp.res,
              hdr.tcp.flags,
              hdr.tcp.window,
              hdr.tcp.urgentPtr },
            hdr.tcp.checksum,
            HashAlgorithm.csum16);

        /* A UDP checksum of 0 means "no checksum" (RFC 768): it stays 0. */
        update_checksum_with_payload(
            hdr.udp.isValid() && hdr.udp.checksum != 16w0,
            { hdr.ipv4.srcAddr,
              hdr.ipv4.dstAddr,
              8w0,
              hdr.ipv4.protocol,
              hdr.udp.len,
              hdr.udp.srcPort,
              hdr.udp.dstPort,
              hdr.udp.len },
            hdr.udp.checksum,
            HashAlgorithm.csum16);
    }
}

/*************************************************************************
 ***********************  D E P A R S E R  *******************************
 *************************************************************************/

control MyDeparser(packet_out packet, in headers hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.tcp);
        packet.emit(hdr.udp);
    }
}

/*************************************************************************
 ***********************  S W I T C H  ***********************************
 *************************************************************************/

V1Switch(
    MyParser(),
    MyVerifyChecksum(),
    MyIngress(),
    MyEgress(),
    MyComputeChecksum(),
    MyDeparser()
) main;
