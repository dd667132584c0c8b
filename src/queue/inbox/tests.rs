use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::ids::MessageId;
use crate::message::{Deaths, Message, Payload};

fn msg(i: u64) -> Enqueue {
    let msg = Message { id: MessageId(i), key: "k".into(), payload: Payload::value(i), deaths: Deaths::NONE };
    Enqueue { msg: Arc::new(msg), credited: false, stamp: crate::queue::Stamp::slot(crate::queue::NO_SLOT) }
}

async fn recv_many(rx: &InboxReceiver, max: usize) -> Vec<u64> {
    let mut batch = Vec::new();
    poll_fn(|cx| rx.poll_recv_many(cx, &mut batch, max)).await;
    batch.iter().map(|e| e.msg.id.0).collect()
}

#[test]
fn a_bounded_inbox_refuses_past_its_bound_and_takes_again_after_a_receive() {
    let (tx, rx) = inbox(Some(2));
    assert!(tx.try_send(msg(1)).is_ok());
    assert!(tx.try_send(msg(2)).is_ok());
    assert!(matches!(tx.try_send(msg(3)), Err(TrySendError::Full(e)) if e.msg.id.0 == 3));
    assert_eq!(rx.try_recv().map(|e| e.msg.id.0), Some(1));
    assert!(tx.try_send(msg(3)).is_ok());
    assert!(matches!(tx.try_send(msg(4)), Err(TrySendError::Full(_))));
}

#[test]
fn an_inbox_bounded_by_credits_never_refuses() {
    let (tx, rx) = inbox(None);
    for i in 0..5_000 {
        assert!(tx.try_send(msg(i)).is_ok());
    }
    let ids = futures::executor::block_on(recv_many(&rx, 10_000));
    assert_eq!(ids, (0..5_000).collect::<Vec<_>>(), "all of them, in order");
}

#[tokio::test]
async fn a_waiting_send_completes_when_the_receiver_makes_room() {
    let (tx, rx) = inbox(Some(1));
    tx.try_send(msg(1)).unwrap();
    let tx = Arc::new(tx);
    let sending = tokio::spawn({
        let tx = tx.clone();
        async move { tx.send(msg(2)).await.is_ok() }
    });
    tokio::task::yield_now().await;
    assert!(!sending.is_finished(), "the send waits while the inbox is full");
    assert_eq!(recv_many(&rx, 8).await, [1]);
    assert!(sending.await.unwrap(), "the send completes once there is room");
    assert_eq!(recv_many(&rx, 8).await, [2]);
}

#[tokio::test]
async fn closing_refuses_sends_and_ends_the_inbox_once_drained() {
    let (tx, rx) = inbox(Some(4));
    tx.try_send(msg(1)).unwrap();
    rx.close();
    assert!(matches!(tx.try_send(msg(2)), Err(TrySendError::Closed(_))));
    assert!(tx.send(msg(3)).await.is_err());
    assert_eq!(recv_many(&rx, 8).await, [1]);
    assert_eq!(recv_many(&rx, 8).await, Vec::<u64>::new(), "ended");
}

#[tokio::test]
async fn a_sleeping_receiver_learns_that_the_sender_is_gone() {
    let (tx, rx) = inbox(None);
    let receiving = tokio::spawn(async move { recv_many(&rx, 8).await });
    tokio::task::yield_now().await;
    assert!(!receiving.is_finished(), "the receiver sleeps on an empty inbox");
    drop(tx);
    assert_eq!(receiving.await.unwrap(), Vec::<u64>::new(), "ended");
}

/// Senders on several threads and a receiver that sleeps whenever the inbox is empty: every message
/// arrives, each sender's in order. A lost wake-up would leave the receiver asleep; the watchdog turns
/// that hang into a failure.
#[test]
fn no_wake_up_is_lost_between_threads() {
    const SENDERS: u64 = 3;
    const EACH: u64 = 20_000;
    let (tx, rx) = inbox(Some(64));
    let tx = Arc::new(tx);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut next = [0_u64; SENDERS as usize];
        futures::executor::block_on(async {
            let mut got = 0;
            while got < SENDERS * EACH {
                // Small batches, so that the receiver often finds the inbox empty and sleeps.
                for id in recv_many(&rx, 3).await {
                    let (sender, seq) = ((id / EACH) as usize, id % EACH);
                    assert_eq!(seq, next[sender], "sender {sender}'s messages arrive in order");
                    next[sender] += 1;
                    got += 1;
                }
            }
        });
        done_tx.send(()).unwrap();
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                futures::executor::block_on(async {
                    for i in 0..EACH {
                        tx.send(msg(s * EACH + i)).await.unwrap();
                    }
                })
            })
        })
        .collect();
    done_rx.recv_timeout(Duration::from_secs(60)).expect("the receiver got every message (no lost wake-up)");
    for s in senders {
        s.join().unwrap();
    }
}

/// Every publish moves one of these per target queue through the inbox: it stays within four words.
#[test]
fn an_inbox_message_stays_small() {
    assert!(size_of::<Enqueue>() <= 32, "Enqueue is {} bytes", size_of::<Enqueue>());
    assert!(size_of::<crate::protocol::DeliverItem>() <= 24, "DeliverItem grew");
}

/// A delay travels in four bytes and is never shortened: rounded up to the millisecond, to the
/// second past 24 days, and a year (`DELAY_MAX`) still fits.
#[test]
fn a_delay_travels_rounded_up_never_early() {
    use crate::protocol::Delay;
    let of = |d: Duration| Delay::of(d).duration();
    assert_eq!(of(Duration::ZERO), None);
    assert_eq!(of(Duration::from_micros(1)), Some(Duration::from_millis(1)));
    assert_eq!(of(Duration::from_micros(1500)), Some(Duration::from_millis(2)));
    assert_eq!(of(Duration::from_millis(2_147_483_647)), Some(Duration::from_millis(2_147_483_647)));
    let past_24_days = Duration::from_millis(2_147_483_648) + Duration::from_micros(1);
    assert_eq!(of(past_24_days), Some(Duration::from_secs(2_147_484)));
    let year = Duration::from_secs(365 * 24 * 60 * 60); // `DELAY_MAX`
    assert_eq!(of(year), Some(year));
    for d in [Duration::from_nanos(999), Duration::from_millis(59_999), year - Duration::from_nanos(1)] {
        assert!(of(d).is_some_and(|back| back >= d), "{d:?} came back shorter");
    }
}
