//! Helpers shared by the integration tests.

use std::time::Duration;

use tubemail::{Broker, Stats};

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
