//! Magicsock across the RFC 4787 NAT matrix, in virtual time.

use std::time::Duration;

use weft_magicsock::Path;
use weft_sim::{direct_path_possible, Edge, Filtering, Mapping, Nat, Sim};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn edges() -> Vec<Edge> {
    let mut v = vec![Edge::Open];
    for m in [Mapping::EndpointIndependent, Mapping::EndpointDependent] {
        for f in [
            Filtering::Open,
            Filtering::AddressRestricted,
            Filtering::PortRestricted,
        ] {
            v.push(Edge::Nat(Nat::new(m, f)));
        }
    }
    v
}

fn is_direct(p: Path) -> bool {
    matches!(p, Path::Direct(_))
}

/// Sends one packet each way per second for `secs` seconds; returns how many
/// of the packets sent each way arrived intact.
fn exchange(sim: &mut Sim, a: usize, b: usize, secs: u64) -> (usize, usize, usize) {
    let mut sent = 0;
    for i in 0..secs {
        let before_a = sim.hosts[b].delivered.len();
        let pa = sim.send_ip(a, b, format!("a->b {i}").as_bytes());
        let pb = sim.send_ip(b, a, format!("b->a {i}").as_bytes());
        sent += 1;
        sim.run_for(Duration::from_secs(1));
        assert!(
            sim.hosts[b].delivered[before_a..].contains(&pa),
            "packet {i} a->b lost"
        );
        let _ = pb;
    }
    let got_b = sim.hosts[b].delivered.len();
    let got_a = sim.hosts[a].delivered.len();
    (sent, got_b, got_a)
}

#[test]
fn direct_path_whenever_possible_derp_otherwise_across_the_nat_matrix() {
    let mut failures = Vec::new();
    for ea in edges() {
        for eb in edges() {
            let mut sim = Sim::new();
            let a = sim.add_host("a", ea, Duration::from_millis(10));
            let b = sim.add_host("b", eb, Duration::from_millis(15));
            sim.run_for(secs(1));
            let (sent, got_b, got_a) = exchange(&mut sim, a, b, 30);
            let want_direct = direct_path_possible(ea, eb);
            let (ab, ba) = (sim.path(a, b), sim.path(b, a));
            let ok = got_b == sent
                && got_a == sent
                && if want_direct {
                    is_direct(ab) && is_direct(ba)
                } else {
                    ab == Path::Derp(900) && ba == Path::Derp(900)
                };
            if !ok {
                failures.push(format!(
                    "{ea:?} x {eb:?}: want_direct={want_direct} a->b={ab:?} b->a={ba:?} delivered {got_b}/{sent} and {got_a}/{sent}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn direct_path_is_found_within_a_few_seconds_between_easy_nats() {
    let nat = Edge::Nat(Nat::new(
        Mapping::EndpointIndependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", nat, Duration::from_millis(10));
    let b = sim.add_host("b", nat, Duration::from_millis(10));
    sim.run_for(secs(1));
    let pkt = sim.send_ip(a, b, b"first");
    assert!(
        sim.run_until(|s| s.hosts[b].delivered.contains(&pkt), secs(1)),
        "first packet arrives via DERP"
    );
    let ok = sim.run_until(
        |s| is_direct(s.path(a, b)) && is_direct(s.path(b, a)),
        secs(10),
    );
    assert!(
        ok,
        "direct within 10 s, a->b={:?} b->a={:?}",
        sim.path(a, b),
        sim.path(b, a)
    );
}

#[test]
fn hard_nats_on_both_sides_carry_traffic_over_derp() {
    let hard = Edge::Nat(Nat::new(
        Mapping::EndpointDependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", hard, Duration::from_millis(10));
    let b = sim.add_host("b", hard, Duration::from_millis(10));
    sim.run_for(secs(1));
    let (sent, got_b, got_a) = exchange(&mut sim, a, b, 20);
    assert_eq!((got_b, got_a), (sent, sent));
    assert_eq!(sim.path(a, b), Path::Derp(900));
    assert!(sim.stats.derp_relayed > 0);
}

#[test]
fn wireguard_encrypts_ip_packets_end_to_end() {
    let mut sim = Sim::new();
    sim.log_wire = true;
    let a = sim.add_host("a", Edge::Open, Duration::from_millis(5));
    let b = sim.add_host("b", Edge::Open, Duration::from_millis(5));
    sim.run_for(secs(1));
    let secret = b"attack at dawn, bring snacks";
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(sim.send_ip(a, b, secret));
        sim.run_for(secs(1));
    }
    assert_eq!(
        sim.hosts[b].delivered, sent,
        "every packet arrives once, in order, byte for byte"
    );
    assert!(is_direct(sim.path(a, b)));
    assert!(
        !sim.wire_log
            .iter()
            .any(|d| d.windows(secret.len()).any(|w| w == secret)),
        "plaintext never appears on the wire"
    );
    assert!(
        sim.wire_log.iter().any(|d| d.first() == Some(&4)),
        "wireguard transport packets were sent"
    );
}

#[test]
fn nat_rebinding_falls_back_to_derp_then_recovers_a_direct_path() {
    let nat = Edge::Nat(Nat::new(
        Mapping::EndpointIndependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", nat, Duration::from_millis(10));
    let b = sim.add_host("b", nat, Duration::from_millis(10));
    sim.run_for(secs(1));
    exchange(&mut sim, a, b, 10);
    let Path::Direct(old) = sim.path(b, a) else {
        panic!("direct before rebinding: {:?}", sim.path(b, a))
    };

    sim.rebind_nat(a);
    // Keep traffic flowing both ways, twice a second. Until the old path's
    // trust lapses (6.5 s after its last pong) packets still go to the dead
    // mapping and are lost, as in Tailscale; once on DERP, nothing is lost.
    let mut fell_back_at = None;
    let mut recovered_at = None;
    let mut lost_after_fallback = 0;
    for i in 0..120u64 {
        let pa = sim.send_ip(a, b, format!("a {i}").as_bytes());
        let pb = sim.send_ip(b, a, format!("b {i}").as_bytes());
        sim.run_for(Duration::from_millis(500));
        if fell_back_at.is_some() {
            lost_after_fallback += usize::from(!sim.hosts[b].delivered.contains(&pa));
            lost_after_fallback += usize::from(!sim.hosts[a].delivered.contains(&pb));
        }
        match sim.path(b, a) {
            Path::Derp(_) if fell_back_at.is_none() => fell_back_at = Some(i),
            Path::Direct(addr) if fell_back_at.is_some() && addr != old => {
                recovered_at = Some(i);
                break;
            }
            _ => {}
        }
    }
    let fell_back_at = fell_back_at.expect("the dead direct path was abandoned for DERP");
    assert!(fell_back_at <= 16, "fell back after {} s", fell_back_at / 2);
    let recovered_at = recovered_at.expect("a new direct path was found after the rebinding");
    assert!(recovered_at < 80, "recovered after {} s", recovered_at / 2);
    assert_eq!(
        lost_after_fallback, 0,
        "no packet lost once DERP carried them"
    );
    assert!(is_direct(sim.path(a, b)));
}

#[test]
fn idle_peers_stop_pinging_and_their_nat_mappings_expire_without_harm() {
    let nat = Edge::Nat(Nat::new(
        Mapping::EndpointIndependent,
        Filtering::AddressRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", nat, Duration::from_millis(10));
    let b = sim.add_host("b", nat, Duration::from_millis(10));
    sim.run_for(secs(1));
    exchange(&mut sim, a, b, 5);
    assert!(is_direct(sim.path(a, b)));
    sim.run_for(secs(120));
    let quiet_from = sim.stats.udp_sent;
    sim.run_for(secs(10));
    // Only STUN rounds (one probe every 20-26 s per host) may remain.
    assert!(
        sim.stats.udp_sent - quiet_from <= 2,
        "idle sockets stay quiet"
    );
    // Traffic resumes and finds its way again.
    let pkt = sim.send_ip(a, b, b"wake up");
    assert!(sim.run_until(|s| s.hosts[b].delivered.contains(&pkt), secs(2)));
    assert!(sim.run_until(|s| is_direct(s.path(a, b)), secs(15)));
}

#[test]
fn four_hosts_behind_mixed_nats_reach_each_other_pairwise() {
    let mut sim = Sim::new();
    let all = [
        Edge::Open,
        Edge::Nat(Nat::new(
            Mapping::EndpointIndependent,
            Filtering::PortRestricted,
        )),
        Edge::Nat(Nat::new(
            Mapping::EndpointDependent,
            Filtering::PortRestricted,
        )),
        Edge::Nat(Nat::new(
            Mapping::EndpointDependent,
            Filtering::AddressRestricted,
        )),
    ];
    let ids: Vec<usize> = all
        .iter()
        .enumerate()
        .map(|(i, e)| {
            sim.add_host(
                &format!("h{i}"),
                *e,
                Duration::from_millis(5 + 7 * i as u64),
            )
        })
        .collect();
    sim.run_for(secs(1));
    let mut sent = Vec::new();
    for round in 0..20 {
        for &x in &ids {
            for &y in &ids {
                if x != y {
                    let p = sim.send_ip(x, y, format!("{x}->{y} #{round}").as_bytes());
                    sent.push((y, p));
                }
            }
        }
        sim.run_for(secs(1));
    }
    for (y, p) in &sent {
        assert!(
            sim.hosts[*y].delivered.contains(p),
            "lost {}",
            String::from_utf8_lossy(&p[28..])
        );
    }
    for &x in &ids {
        for &y in &ids {
            if x == y {
                continue;
            }
            let want = direct_path_possible(all[x], all[y]);
            assert_eq!(
                is_direct(sim.path(x, y)),
                want,
                "{x}->{y} {:?}",
                sim.path(x, y)
            );
        }
    }
}

mod property {
    use super::*;
    use proptest::prelude::*;

    fn edge() -> impl Strategy<Value = Edge> {
        proptest::sample::select(edges())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the NATs and latencies: nothing is lost, and the path is
        /// direct exactly when the oracle says hole punching can work.
        #[test]
        fn every_packet_arrives_and_paths_match_the_oracle(
            ea in edge(),
            eb in edge(),
            la in 1u64..80,
            lb in 1u64..80,
        ) {
            let mut sim = Sim::new();
            let a = sim.add_host("a", ea, Duration::from_millis(la));
            let b = sim.add_host("b", eb, Duration::from_millis(lb));
            sim.run_for(secs(1));
            let mut sent = Vec::new();
            for i in 0..25 {
                sent.push((b, sim.send_ip(a, b, format!("{i}").as_bytes())));
                sent.push((a, sim.send_ip(b, a, format!("{i}").as_bytes())));
                sim.run_for(secs(1));
            }
            for (to, p) in &sent {
                prop_assert!(sim.hosts[*to].delivered.contains(p));
            }
            let want = direct_path_possible(ea, eb);
            prop_assert_eq!(is_direct(sim.path(a, b)), want);
            prop_assert_eq!(is_direct(sim.path(b, a)), want);
        }
    }
}

#[test]
fn a_peer_leaving_derp_is_reported_gone_and_traffic_resumes_when_it_returns() {
    let hard = Edge::Nat(Nat::new(
        Mapping::EndpointDependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", hard, Duration::from_millis(10));
    let b = sim.add_host("b", hard, Duration::from_millis(10));
    sim.run_for(secs(1));
    exchange(&mut sim, a, b, 3);
    let delivered = sim.derp_stats(900).expect("region").packets_delivered;
    assert!(delivered > 0);

    sim.disconnect_derp(b);
    sim.run_for(secs(1));
    assert_eq!(
        sim.hosts[a].derp_peer_gone, 1,
        "a learned that b left the region"
    );
    let lost = sim.send_ip(a, b, b"into the void");
    sim.run_for(secs(2));
    assert!(!sim.hosts[b].delivered.contains(&lost));
    assert!(sim.derp_stats(900).expect("region").dropped_unknown > 0);

    sim.connect_derp(b);
    let back = sim.send_ip(a, b, b"welcome back");
    assert!(sim.run_until(|s| s.hosts[b].delivered.contains(&back), secs(2)));
}

#[test]
fn cli_ping_answers_via_derp_first_then_goes_direct_within_ten_tries() {
    let nat = Edge::Nat(Nat::new(
        Mapping::EndpointIndependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    let a = sim.add_host("a", nat, Duration::from_millis(10));
    let b = sim.add_host("b", nat, Duration::from_millis(10));
    sim.run_for(secs(1));
    let mut vias = Vec::new();
    for _ in 0..10 {
        let seen = sim.hosts[a].events.len();
        sim.ping(a, b);
        sim.run_for(secs(1));
        let pongs: Vec<Path> = sim.hosts[a].events[seen..]
            .iter()
            .filter_map(|(_, e)| match e {
                weft_magicsock::Event::Pong { via, .. } => Some(*via),
                _ => None,
            })
            .collect();
        vias.extend(pongs.iter().copied());
        if pongs.iter().any(|p| is_direct(*p)) {
            break;
        }
    }
    assert_eq!(
        vias.first(),
        Some(&Path::Derp(900)),
        "first answer comes through DERP: {vias:?}"
    );
    assert!(
        vias.iter().any(|p| is_direct(*p)),
        "a direct pong within 10 tries: {vias:?}"
    );
}

#[test]
fn hosts_pick_the_nearest_derp_region_as_home_and_relay_through_it() {
    let hard = Edge::Nat(Nat::new(
        Mapping::EndpointDependent,
        Filtering::PortRestricted,
    ));
    let mut sim = Sim::new();
    sim.add_region(901, Duration::from_millis(2));
    let a = sim.add_host("a", hard, Duration::from_millis(10));
    let b = sim.add_host("b", hard, Duration::from_millis(10));
    sim.run_for(secs(1));
    assert_eq!(sim.hosts[a].sock.home_derp(), Some(901));
    assert_eq!(sim.peer_config(b).home_derp, Some(901));
    let (sent, got_b, got_a) = exchange(&mut sim, a, b, 5);
    assert_eq!((got_b, got_a), (sent, sent));
    assert_eq!(sim.path(a, b), Path::Derp(901));
    assert!(sim.derp_stats(901).expect("region").packets_delivered > 0);
    assert_eq!(sim.derp_stats(900).expect("region").packets_delivered, 0);
}
