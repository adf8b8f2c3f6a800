//! MagicDNS end to end, in process: two daemons (channel TUNs, loopback UDP) join an
//! in-process `weft-control`; a DNS query packet that alpha's host sends to quad-100
//! (100.100.100.100:53 and fd7a:115c:a1e0::53) comes back on alpha's TUN with bravo's
//! address. No root, no TUN, nothing outside 127.0.0.1, no host DNS configuration.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{start_node, tailnet, wait_status, Node, WAIT};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use weft_agent::localapi::BackendState;
const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

fn sum_words(mut sum: u32, b: &[u8]) -> u32 {
    for ch in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn dns_query(id: u16, name: &str, typ: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), typ));
    m.to_vec().unwrap()
}

/// A UDP packet from `src`:40000 to quad-100 port 53 (checksums filled in).
fn udp_to_quad100(src: IpAddr, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = vec![0x9c, 0x40, 0, 53];
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let (mut ip, pseudo) = match src {
        IpAddr::V4(s) => {
            let d = Ipv4Addr::new(100, 100, 100, 100);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + ulen) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum_words(0, &ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let p = sum_words(sum_words(0, &s.octets()), &d.octets()) + 17 + ulen as u32;
            (ip, p)
        }
        IpAddr::V6(s) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(ulen as u16).to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&QUAD100_V6.octets());
            let p = sum_words(sum_words(0, &s.octets()), &QUAD100_V6.octets()) + 17 + ulen as u32;
            (ip, p)
        }
    };
    let c = fold(sum_words(pseudo, &udp));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp);
    ip
}

/// Sends one query from alpha's host and waits for the reply on alpha's TUN; checks the
/// reply's addresses, ports and checksums and returns the DNS message.
async fn ask(n: &mut Node, src: IpAddr, id: u16, name: &str, typ: RecordType) -> Message {
    n.to_tun
        .send(udp_to_quad100(src, &dns_query(id, name, typ)))
        .await
        .unwrap();
    let pkt = tokio::time::timeout(WAIT, n.from_peers.recv())
        .await
        .expect("a reply on the TUN")
        .expect("TUN channel open");
    let (hdr, pseudo) = match src {
        IpAddr::V4(s) => {
            assert_eq!(pkt[0] >> 4, 4);
            assert_eq!(&pkt[12..16], &[100, 100, 100, 100]);
            assert_eq!(&pkt[16..20], &s.octets());
            assert_eq!(fold(sum_words(0, &pkt[..20])), 0, "IPv4 header checksum");
            (
                20,
                sum_words(0, &pkt[12..20]) + 17 + (pkt.len() - 20) as u32,
            )
        }
        IpAddr::V6(s) => {
            assert_eq!(pkt[0] >> 4, 6);
            assert_eq!(&pkt[8..24], &QUAD100_V6.octets());
            assert_eq!(&pkt[24..40], &s.octets());
            (40, sum_words(0, &pkt[8..40]) + 17 + (pkt.len() - 40) as u32)
        }
    };
    assert_eq!(fold(sum_words(pseudo, &pkt[hdr..])), 0, "UDP checksum");
    assert_eq!(u16::from_be_bytes([pkt[hdr], pkt[hdr + 1]]), 53);
    assert_eq!(u16::from_be_bytes([pkt[hdr + 2], pkt[hdr + 3]]), 40000);
    let m = Message::from_vec(&pkt[hdr + 8..]).unwrap();
    assert_eq!(m.id(), id);
    m
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|a| match a.data() {
            RData::A(v) => Some(IpAddr::V4(v.0)),
            RData::AAAA(v) => Some(IpAddr::V6(v.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quad100_answers_tailnet_names_from_the_netmap() {
    let t = tailnet().await;
    let mut a = start_node(&t.url, &t.key, "alpha").await;
    let b = start_node(&t.url, &t.key, "bravo").await;
    let sa = wait_status(&a.client, "alpha to see bravo", |s| {
        s.backend_state == BackendState::Running && s.peer.values().any(|p| p.host_name == "bravo")
    })
    .await;
    let sb = wait_status(&b.client, "bravo running", |s| {
        s.backend_state == BackendState::Running
    })
    .await;
    let a4 = *sa.tailscale_ips.iter().find(|i| i.is_ipv4()).unwrap();
    let b4 = *sb.tailscale_ips.iter().find(|i| i.is_ipv4()).unwrap();
    let bravo = sa
        .peer
        .values()
        .find(|p| p.host_name == "bravo")
        .unwrap()
        .dns_name
        .clone();
    assert!(
        bravo.to_ascii_lowercase().ends_with(".tailnet.test."),
        "{bravo}"
    );

    // FQDN (as the netmap spells it, and without the dot, in upper case) and short name.
    let m = ask(&mut a, a4, 1, &bravo, RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs(&m), vec![b4]);
    assert_eq!(m.answers()[0].ttl(), 600);
    let upper = bravo.trim_end_matches('.').to_ascii_uppercase();
    let m = ask(&mut a, a4, 2, &upper, RecordType::A).await;
    assert_eq!(addrs(&m), vec![b4]);
    let m = ask(&mut a, a4, 3, "bravo", RecordType::A).await;
    assert_eq!(addrs(&m), vec![b4]);
    // Our own name too.
    let m = ask(&mut a, a4, 4, "alpha.tailnet.test.", RecordType::A).await;
    assert_eq!(addrs(&m), vec![a4]);

    // Unknown inside the suffix: NXDOMAIN; outside: REFUSED (no forwarding).
    let m = ask(&mut a, a4, 5, "nobody.tailnet.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let m = ask(&mut a, a4, 6, "example.com.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);

    // Over IPv6 to fd7a:115c:a1e0::53, from our IPv6 address, when we have one.
    if let Some(a6) = sa.tailscale_ips.iter().find(|i| i.is_ipv6()).copied() {
        let m = ask(&mut a, a6, 7, &bravo, RecordType::A).await;
        assert_eq!(addrs(&m), vec![b4]);
    }

    // A peer that joins later is answered after the netmap update.
    let c = start_node(&t.url, &t.key, "charlie").await;
    let sc = wait_status(&c.client, "charlie running", |s| {
        s.backend_state == BackendState::Running
    })
    .await;
    let c4 = *sc.tailscale_ips.iter().find(|i| i.is_ipv4()).unwrap();
    wait_status(&a.client, "alpha to see charlie", |s| {
        s.peer.values().any(|p| p.host_name == "charlie")
    })
    .await;
    // The engine gets the netmap over its command channel, which may be served after a
    // query already queued on the TUN: ask until the answer appears (NXDOMAIN until then).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 8;
    loop {
        let m = ask(&mut a, a4, id, "charlie.tailnet.test", RecordType::A).await;
        if addrs(&m) == vec![c4] {
            break;
        }
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(
            tokio::time::Instant::now() < deadline,
            "charlie never resolved"
        );
        id += 1;
        let v = a.client.status(None).await.unwrap().version;
        let _ = a.client.status(Some((v, Duration::from_millis(200)))).await;
    }

    let counters = wait_status(&a.client, "DNS counter", |s| s.data_plane.dns_answered >= 8).await;
    assert!(counters.data_plane.dns_answered >= 8);
}
