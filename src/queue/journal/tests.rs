//! The journal's records and replay, on a real directory.

use std::sync::Arc;

use super::*;
use crate::message::{DeathReason, Deaths};

fn clock() -> Clock {
    Clock::new(tokio::time::Instant::now())
}

fn message(id: u64, key: &str, payload: &'static [u8]) -> Message {
    Message {
        id: MessageId(id),
        key: key.into(),
        payload: Payload::Bytes(Bytes::from_static(payload)),
        deaths: Deaths::NONE,
    }
}

fn open(dir: &LogDir) -> (Arc<Journal>, Replay) {
    let (journal, replay) = Journal::open(dir, "billing", Fsync::Interval, clock()).unwrap();
    (Arc::new(journal), replay)
}

fn ids(replay: &Replay) -> Vec<(u64, u64, u32)> {
    replay.messages.iter().map(|r| (r.slot, r.msg.id.0, r.deliveries)).collect()
}

#[test]
fn keys_name_their_kind_and_slot() {
    assert_eq!(parse_key(&key(ENQUEUED, 7)), Some((ENQUEUED, 7)));
    assert_eq!(parse_key(&key(DELIVERED, u64::MAX - 1)), Some((DELIVERED, u64::MAX - 1)));
    assert_eq!(parse_key(b"e123"), None, "a key is a kind and eight bytes");
    assert_eq!(parse_key(b""), None);
}

#[test]
fn an_enqueue_record_round_trips_with_its_death_history() {
    let died = message(9, "orders.1", b"\x91\x01").died(&Arc::from("billing"), DeathReason::Rejected, 1500);
    let record = EnqueueRecord {
        id: 9,
        key: "orders.1".into(),
        payload: Bytes::from_static(b"\x91\x01"),
        deaths: died.deaths().to_vec(),
        deliveries: 3,
        due_ms: Some(1_800_000_000_000),
    };
    let bytes = rmp_serde::to_vec(&record).unwrap();
    assert_eq!(rmp_serde::from_slice::<EnqueueRecord>(&bytes).unwrap(), record);
}

#[test]
fn an_enqueue_record_written_before_delays_reads_as_due_at_once() {
    // The five fields of the record as it was before `due_ms`.
    let old = (9u64, "k", Bytes::from_static(b"p"), Vec::<crate::message::Death>::new(), 2u32);
    let bytes = rmp_serde::to_vec(&old).unwrap();
    let record = rmp_serde::from_slice::<EnqueueRecord>(&bytes).unwrap();
    assert_eq!((record.id, record.deliveries, record.due_ms), (9, 2, None));
}

#[test]
fn replay_keeps_what_was_not_settled_with_its_delivery_count() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    {
        let (journal, replay) = open(&log);
        assert!(replay.messages.is_empty());
        let payload = Bytes::from_static(b"p");
        let mut slots = Vec::new();
        for id in 1..=5 {
            slots.push(journal.enqueue(&message(id, "k", b"p"), &payload, None).unwrap().0);
        }
        assert_eq!(slots, [0, 1, 2, 3, 4]);
        journal.delivered(&[(0, 1), (1, 1), (1, 2)]);
        // Acked after a delivery, and dropped before one.
        journal.settled(&[(0, true), (3, false)]);
        journal.close();
    }
    let (journal, replay) = open(&log);
    assert_eq!(ids(&replay), [(1, 2, 2), (2, 3, 0), (4, 5, 0)]);
    assert_eq!(replay.max_id, Some(MessageId(5)));
    assert_eq!(replay.next_slot, 5, "slots continue past every slot the journal mentions");
    let r = &replay.messages[0];
    assert_eq!((r.msg.key(), r.msg.payload().get::<Bytes>().map(|b| &b[..])), ("k", Some(&b"p"[..])));
    // A slot given out after a restart does not collide with a replayed one.
    assert_eq!(journal.enqueue(&message(6, "k", b"p"), &Bytes::new(), None).unwrap().0, 5);
}

#[test]
fn a_delivered_record_without_its_enqueue_record_is_no_message_and_is_tombstoned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    {
        let (journal, _) = open(&log);
        journal.enqueue(&message(1, "a", b"1"), &Bytes::from_static(b"1"), None).unwrap();
        journal.settled(&[(0, false)]);
        journal.delivered(&[(0, 4)]);
        journal.close();
    }
    let (journal, replay) = open(&log);
    assert!(replay.messages.is_empty(), "a delivered record alone is no message: {:?}", ids(&replay));
    assert_eq!(replay.next_slot, 1);
    assert_eq!(replay.orphans, [0], "and it is tombstoned at open");
    std::thread::sleep(std::time::Duration::from_millis(2));
    journal.compact().unwrap();
    assert_eq!(journal.bytes(), 0, "compaction then leaves nothing");
}

#[test]
fn compaction_leaves_only_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let (journal, _) = open(&log);
    let payload = Bytes::from(vec![7_u8; 1000]);
    for id in 0..2_000 {
        let (slot, _) = journal.enqueue(&message(id, "k", b""), &payload, None).unwrap();
        journal.delivered(&[(slot, 1)]);
        if id % 100 != 0 {
            journal.settled(&[(slot, true)]);
        }
    }
    let before = journal.bytes();
    // The tombstones of this millisecond stay until the next compaction.
    std::thread::sleep(std::time::Duration::from_millis(2));
    journal.compact().unwrap();
    let after = journal.bytes();
    let live = 20 * (payload.len() as u64 + 100);
    assert!(before > 10 * live, "before {before}, live {live}");
    assert!(after <= live, "after {after}, live {live}");
    let (partition, replayed) = (journal.log.partition(0).unwrap(), replay(&journal.log).unwrap());
    assert_eq!(replayed.messages.len(), 20);
    assert!(partition.info().segments.len() <= 2, "empty segments are removed: {:?}", partition.info());
}
