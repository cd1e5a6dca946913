//! TCP payloads from a pcap file, for tests that check what is on the wire.
//!
//! Include with `#[path = "support/pcap.rs"] mod pcap;`.
#![allow(dead_code)]

/// One TCP segment's payload from a pcap file.
pub struct Segment {
    pub src: ([u8; 4], u16),
    pub dst: ([u8; 4], u16),
    pub payload: Vec<u8>,
}

/// The TCP payloads in a pcap file (Ethernet link type, IPv4), in order.
/// Minimal on purpose: little- or big-endian pcap, micro- or nanosecond
/// timestamps, no VLANs, no IP options beyond what IHL says.
pub fn pcap_tcp_segments(pcap: &[u8]) -> Vec<Segment> {
    assert!(pcap.len() >= 24, "pcap too short: {} bytes", pcap.len());
    let magic = u32::from_le_bytes(pcap[0..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => panic!("not a pcap file (magic {other:#x})"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    assert_eq!(u32_at(pcap, 20), 1, "link type must be Ethernet");
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let captured = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[at + 16..(at + 16 + captured).min(pcap.len())];
        at += 16 + captured;
        // Ethernet: 14 bytes, EtherType 0x0800 for IPv4.
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6 || ip.len() < ihl + 20 || total > ip.len() {
            continue;
        }
        let tcp = &ip[ihl..total];
        let data_offset = usize::from(tcp[12] >> 4) * 4;
        let port = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
        segments.push(Segment {
            src: (ip[12..16].try_into().unwrap(), port(0)),
            dst: (ip[16..20].try_into().unwrap(), port(2)),
            payload: tcp[data_offset.min(tcp.len())..].to_vec(),
        });
    }
    segments
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
