//! Helpers shared by the integration tests.
// Each test binary compiles this module and uses some of its helpers.
#![allow(dead_code)]

use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tubemail::{Broker, Delivery, Outcome, Stats};

pub async fn wait_until(broker: &Broker, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    for _ in 0..1000 {
        let stats = broker.stats().await;
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("waited in vain for {what}: {:?}", broker.stats().await);
}

/// Subscribes a handler to `queue` that acks every delivery and hands it over, in order.
pub async fn collect<T>(broker: &Broker, queue: &str) -> mpsc::UnboundedReceiver<Delivery<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe(queue, move |d: Delivery<T>| {
            let tx = tx.clone();
            async move {
                tx.send(d).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    rx
}

/// This process's resident set, in bytes (Linux: /proc/self/statm).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}
