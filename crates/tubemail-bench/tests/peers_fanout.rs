//! The fan-out shape through the peers on this machine (RabbitMQ, NATS core, NATS JetStream), small
//! runs: at-least-once peers lose nothing; NATS core accounts for every delivery as handled or lost.
//! A peer that is not running is skipped, with a line saying so.
#![cfg(feature = "peers")]

use tubemail_bench::fanout_deliveries;
use tubemail_bench::peers::{
    fanout_jetstream, fanout_nats, fanout_rabbitmq, reachable, PeerResult, NATS_ADDR, RABBITMQ_ADDR,
};

const MESSAGES: u64 = 2_000;
const PAYLOAD: usize = 64;

fn up(name: &str, addr: &str) -> bool {
    let up = reachable(addr);
    if !up {
        println!("{name} not reachable at {addr}: skipping");
    }
    up
}

fn check_common(r: &PeerResult) {
    println!(
        "{} ({}): {} deliveries of {} expected, {} lost, {:.0}/s, p50 {:?} us, p99 {:?} us",
        r.system,
        r.mode,
        r.deliveries,
        r.expected,
        r.lost,
        r.deliveries_per_sec(),
        r.p50_us,
        r.p99_us
    );
    assert_eq!(r.published, MESSAGES);
    assert_eq!(r.expected, fanout_deliveries(MESSAGES));
    assert!(r.deliveries <= r.expected, "more deliveries than the shape makes: {r:?}");
}

fn check_lossless(r: &PeerResult) {
    check_common(r);
    assert_eq!(r.deliveries, r.expected, "{r:?}");
    assert_eq!(r.lost, 0);
    assert!(r.deliveries_per_sec() > 0.0);
    let (p50, p99) = (r.p50_us.expect("p50"), r.p99_us.expect("p99"));
    assert!(p50 > 0.0 && p50 <= p99, "{r:?}");
}

#[test]
fn rabbitmq_auto_ack_delivers_every_message() {
    if !up("RabbitMQ", RABBITMQ_ADDR) {
        return;
    }
    let r = fanout_rabbitmq(MESSAGES, PAYLOAD, false).expect("RabbitMQ run");
    assert_eq!((r.system, r.mode), ("rabbitmq", "at-most-once"));
    check_lossless(&r);
}

#[test]
fn rabbitmq_manual_ack_delivers_every_message() {
    if !up("RabbitMQ", RABBITMQ_ADDR) {
        return;
    }
    let r = fanout_rabbitmq(MESSAGES, PAYLOAD, true).expect("RabbitMQ run");
    assert_eq!((r.system, r.mode), ("rabbitmq-ack", "at-least-once"));
    check_lossless(&r);
}

#[test]
fn nats_core_accounts_for_every_delivery() {
    if !up("NATS", NATS_ADDR) {
        return;
    }
    let r = fanout_nats(MESSAGES, PAYLOAD).expect("NATS run");
    assert_eq!((r.system, r.mode), ("nats", "at-most-once"));
    check_common(&r);
    assert_eq!(r.deliveries + r.lost, r.expected, "{r:?}");
}

#[test]
fn jetstream_delivers_every_message() {
    if !up("NATS", NATS_ADDR) {
        return;
    }
    let r = fanout_jetstream(MESSAGES, PAYLOAD).expect("JetStream run");
    assert_eq!((r.system, r.mode), ("nats-jetstream", "at-least-once"));
    check_lossless(&r);
}

#[test]
fn tiny_payloads_run_without_latency() {
    if !up("NATS", NATS_ADDR) {
        return;
    }
    let r = fanout_jetstream(16, 4).expect("JetStream run");
    assert_eq!(r.deliveries, fanout_deliveries(16));
    assert_eq!((r.p50_us, r.p99_us), (None, None));
}
