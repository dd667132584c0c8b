use super::*;
use proptest::prelude::*;

fn new_job(queue: &str, run_at: Option<i64>, unique: Option<&str>) -> NewJob {
    NewJob {
        name: Arc::from("work"),
        queue: Arc::from(queue),
        args: Bytes::from_static(b"\x90"),
        priority: 0,
        run_at,
        due_micros: 0,
        policy: RetryPolicy::Fixed { retries: 2, delay_ms: 10 },
        retry_for_ms: None,
        timeout_ms: None,
        dead: true,
        unique: unique.map(|k| (k.to_owned(), 1_000)),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { queue: u8, delay: Option<u16>, unique: Option<u8> },
    Tick { name: u8, tick: u8 },
    Claim { queue: u8 },
    Complete,
    Fail { kind: u8 },
    PutBack { front: bool },
    Checkpoint { items: u8 },
    Cancel { pick: u8 },
    RetryDead,
    DeleteDead,
    Advance { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2u8, proptest::option::of(0..500u16), proptest::option::of(0..3u8))
            .prop_map(|(queue, delay, unique)| Op::Enqueue { queue, delay, unique }),
        (0..2u8, 0..10u8).prop_map(|(name, tick)| Op::Tick { name, tick }),
        (0..2u8).prop_map(|queue| Op::Claim { queue }),
        Just(Op::Complete),
        (0..3u8).prop_map(|kind| Op::Fail { kind }),
        any::<bool>().prop_map(|front| Op::PutBack { front }),
        (0..50u8).prop_map(|items| Op::Checkpoint { items }),
        any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        Just(Op::RetryDead),
        Just(Op::DeleteDead),
        (0..400u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A job's durable fields: id, state, retries, cursor, items, last error.
type DurableJob = (JobId, JobState, u32, Option<Bytes>, u64, Option<String>);

/// What must survive a restart: each job's durable fields, and the periodic ticks.
fn durable_view(store: &JobStore) -> (Vec<DurableJob>, Vec<(String, i64)>) {
    let jobs = store
        .all()
        .into_iter()
        .map(|r| {
            // Claims are not journaled: an executing job comes back available; a due scheduled one too.
            let state = match r.state {
                JobState::Executing | JobState::Scheduled | JobState::Retryable => JobState::Available,
                other => other,
            };
            (r.id, state, r.retries, r.progress.cursor.clone(), r.progress.items, r.error.clone())
        })
        .collect();
    (jobs, store.ticks.iter().map(|(k, v)| (k.clone(), *v)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any sequence of operations keeps the store's indexes consistent, and replaying its journal
    /// gives back every job with its durable fields and every periodic tick.
    #[test]
    fn the_journal_replays_to_the_same_jobs(ops in proptest::collection::vec(op(), 1..80)) {
        let mut store = JobStore::new(Limits { dead_max: 4, ..Limits::default() }, true);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut now = 1_000i64;
        let mut journal: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut claimed: Vec<JobId> = Vec::new();
        for op in ops {
            match op {
                Op::Enqueue { queue, delay, unique } => {
                    let unique = unique.map(|u| format!("u{u}"));
                    let _ = store.enqueue(new_job(&format!("q{queue}"), delay.map(|d| now + i64::from(d)), unique.as_deref()), now);
                }
                Op::Tick { name, tick } => {
                    let _ = store.enqueue_tick(&format!("p{name}"), i64::from(tick) * 1_000, new_job("q0", None, None), now);
                }
                Op::Claim { queue } => {
                    store.promote_due(now * 1_000);
                    if let Some(claim) = store.claim(&format!("q{queue}")) {
                        claimed.push(claim.id);
                    }
                }
                Op::Complete => {
                    if let Some(id) = claimed.pop() {
                        prop_assert!(store.complete(id).is_some());
                    }
                }
                Op::Fail { kind } => {
                    if let Some(id) = claimed.pop() {
                        let failure = match kind {
                            0 => Failure::Retry { reason: "r".into(), delay_ms: None },
                            1 => Failure::Discard { reason: "d".into() },
                            _ => Failure::Kill { reason: "k".into() },
                        };
                        prop_assert!(store.fail(id, failure, now, &mut rng).is_some());
                    }
                }
                Op::PutBack { front } => {
                    if let Some(id) = claimed.pop() {
                        prop_assert!(store.put_back(id, front, now));
                    }
                }
                Op::Checkpoint { items } => {
                    if let Some(&id) = claimed.last() {
                        prop_assert!(store.checkpoint(id, Some(Bytes::from(vec![items])), u64::from(items), 5));
                    }
                }
                Op::Cancel { pick } => {
                    let ids: Vec<JobId> = store.all().iter().map(|r| r.id).collect();
                    if !ids.is_empty() {
                        let id = ids[usize::from(pick) % ids.len()];
                        if store.cancel(id) == Cancelled::Running {
                            claimed.retain(|c| *c != id);
                            prop_assert!(store.finish_cancelled(id));
                        }
                    }
                }
                Op::RetryDead => {
                    if let Some((id, lock)) = store.dead().first().map(|r| (r.id, r.unique.clone())) {
                        // Refused while another live job holds its key within the key's TTL.
                        let held = lock.is_some_and(|lock| {
                            lock.until > now
                                && store.all().iter().any(|r| {
                                    r.id != id
                                        && r.state != JobState::Dead
                                        && r.unique.as_ref().is_some_and(|l| l.key == lock.key && l.until > now)
                                })
                        });
                        prop_assert_eq!(store.retry_dead(id, now), !held);
                    }
                }
                Op::DeleteDead => {
                    if let Some(id) = store.dead().last().map(|r| r.id) {
                        prop_assert!(store.delete_dead(id));
                    }
                }
                Op::Advance { ms } => now += i64::from(ms),
            }
            if let Err(e) = store.check() {
                return Err(TestCaseError::fail(e));
            }
            prop_assert!(store.dead.len() <= 4, "the dead set is bounded");
            journal.extend(store.take_writes().into_iter().map(|w| (w.key, w.value)));
        }
        let (recovered, bad) = JobStore::recover(Limits { dead_max: 4, ..Limits::default() }, journal, now);
        prop_assert!(bad.is_empty());
        if let Err(e) = recovered.check() {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(durable_view(&recovered), durable_view(&store));
        prop_assert!(recovered.next_id >= store.next_id, "ids are never reused");
    }
}

#[test]
fn a_unique_key_is_refused_while_held_and_free_after_its_ttl() {
    let mut store = JobStore::new(Limits::default(), false);
    let first = store.enqueue(new_job("q", None, Some("k")), 0).unwrap();
    match store.enqueue(new_job("q", None, Some("k")), 10) {
        Err(Refused::Duplicate { existing, until, .. }) => assert_eq!((existing, until), (first, 1_000)),
        other => panic!("{other:?}"),
    }
    assert!(store.enqueue(new_job("q", None, Some("k")), 1_000).is_ok(), "lapsed at its TTL");
}

#[test]
fn a_full_store_refuses_with_its_bound() {
    let mut store = JobStore::new(Limits { jobs_max: 2, ..Limits::default() }, false);
    store.enqueue(new_job("q", None, None), 0).unwrap();
    store.enqueue(new_job("q", None, None), 0).unwrap();
    assert_eq!(store.enqueue(new_job("q", None, None), 0), Err(Refused::Full { max: 2 }));
}

#[test]
fn a_periodic_tick_is_enqueued_once_even_when_its_tick_record_was_lost() {
    let mut store = JobStore::new(Limits::default(), true);
    assert!(store.enqueue_tick("nightly", 5_000, new_job("q", None, None), 5_000).unwrap().is_some());
    let mut writes = store.take_writes();
    assert_eq!(writes.len(), 3, "the id reservation, the job, then the tick");
    writes.pop(); // a crash between the two appends
    let (mut recovered, _) =
        JobStore::recover(Limits::default(), writes.into_iter().map(|w| (w.key, w.value)), 5_001);
    assert_eq!(recovered.enqueue_tick("nightly", 5_000, new_job("q", None, None), 5_001), Ok(None));
}

#[test]
fn a_job_due_between_two_milliseconds_is_promoted_at_its_microsecond() {
    let mut store = JobStore::new(Limits::default(), true);
    let mut job = new_job("q", Some(1_000), None);
    job.due_micros = 500;
    let id = store.enqueue(job, 1_000).unwrap();
    assert_eq!(store.get(id).unwrap().state, JobState::Scheduled, "due later within this millisecond");
    assert_eq!(store.next_due_us(), Some(1_000_500));
    assert!(store.promote_due(1_000_499).is_empty(), "a microsecond early");
    assert_eq!(store.promote_due(1_000_500).len(), 1);
    assert!(store.claim("q").is_some());
    // Its record keeps the microseconds across a restart.
    let (recovered, bad) =
        JobStore::recover(Limits::default(), store.take_writes().into_iter().map(|w| (w.key, w.value)), 999);
    assert!(bad.is_empty());
    assert_eq!(recovered.next_due_us(), Some(1_000_500));
}

#[test]
fn a_job_come_due_goes_ahead_of_the_last_second_of_the_backlog_not_further() {
    let mut store = JobStore::new(Limits::default(), true);
    let old = store.enqueue(new_job("q", None, None), 0).unwrap();
    let late = store.enqueue(new_job("q", Some(3_000), None), 0).unwrap();
    let early = store.enqueue(new_job("q", Some(2_500), None), 0).unwrap();
    let running = store.enqueue(new_job("q", None, None), 0).unwrap();
    let claimed: Vec<JobId> = std::iter::from_fn(|| store.claim("q").map(|r| r.id)).collect();
    assert_eq!(claimed, [old, running]);
    assert!(store.put_back(old, true, 10), "interrupted: back at the front");
    // A backlog: one job at 1.0 s, three at 1.6 s, one at 2.2 s.
    let at_1000 = store.enqueue(new_job("q", None, None), 1_000).unwrap();
    let at_1600: Vec<JobId> =
        (0..3).map(|_| store.enqueue(new_job("q", None, None), 1_600).unwrap()).collect();
    let at_2200 = store.enqueue(new_job("q", None, None), 2_200).unwrap();
    // Scheduled after that backlog, due before `late`: its place comes from its due time.
    let after = store.enqueue(new_job("q", Some(2_800), None), 2_300).unwrap();
    assert_eq!(store.promote_due(3_000_000).len(), 3);
    let tick = store.enqueue_tick("nightly", 2_900, new_job("q", None, None), 3_000).unwrap().unwrap();
    let order: Vec<JobId> = std::iter::from_fn(|| store.claim("q").map(|r| r.id)).collect();
    // Each due job takes the place of the first job enqueued within a second before its due time
    // (a shared place goes to the smaller id): `early` (due 2.5 s) passes the jobs of 1.6 s, not
    // the one of 1.0 s; `late` (3.0 s) passes the one of 2.2 s, not those of 1.6 s; `after` (2.8 s)
    // and the tick (2.9 s) share the place of the job of 2.2 s and come after it (larger ids).
    let mut want = vec![old, at_1000, early];
    want.extend(&at_1600);
    want.extend([late, at_2200, after, tick]);
    assert_eq!(order, want, "interrupted first, then by place");
    // Brought back from the dead set, a job goes to the back, wherever it was before.
    let killed =
        store.fail(early, Failure::Kill { reason: "no".into() }, 3_000, &mut fastrand::Rng::with_seed(1));
    assert!(matches!(killed, Some(Fate::Dead)));
    let newer = store.enqueue(new_job("q", None, None), 3_000).unwrap();
    assert!(store.retry_dead(early, 3_000));
    let order: Vec<JobId> = std::iter::from_fn(|| store.claim("q").map(|r| r.id)).collect();
    assert_eq!(order, [newer, early]);
}

#[test]
fn a_failures_reason_is_kept_to_its_bound_at_a_character_boundary() {
    let mut store = JobStore::new(Limits::default(), false);
    let id = store.enqueue(new_job("q", None, None), 0).unwrap();
    assert!(store.claim("q").is_some());
    let reason = "é".repeat(ERROR_MAX); // two bytes each
    let fate = store.fail(id, Failure::Kill { reason }, 0, &mut fastrand::Rng::with_seed(1));
    assert!(matches!(fate, Some(Fate::Dead)));
    let kept = store.get(id).unwrap().error.clone().unwrap();
    assert_eq!(kept.len(), ERROR_MAX);
    assert!(kept.chars().all(|c| c == 'é'));
}

#[test]
fn after_a_restart_a_job_come_due_still_passes_the_last_second_of_the_backlog() {
    let mut store = JobStore::new(Limits::default(), true);
    let old = store.enqueue(new_job("q", None, None), 0).unwrap();
    let backlog: Vec<JobId> =
        (0..3).map(|i| store.enqueue(new_job("q", None, None), 1_500 + i).unwrap()).collect();
    let due = store.enqueue(new_job("q", Some(2_400), None), 1_600).unwrap();
    let (mut recovered, bad) = JobStore::recover(
        Limits::default(),
        store.take_writes().into_iter().map(|w| (w.key, w.value)),
        2_000,
    );
    assert!(bad.is_empty());
    assert_eq!(recovered.promote_due(2_400_000).len(), 1);
    let order: Vec<JobId> = std::iter::from_fn(|| recovered.claim("q").map(|r| r.id)).collect();
    // Due at 2.4 s: the place of the first job enqueued since 1.4 s (shared with it, and after
    // it: its id is the smaller), as before the restart; not behind the whole backlog.
    assert_eq!(order, [old, backlog[0], due, backlog[1], backlog[2]]);
}

proptest! {
    /// The ready queue's deques and side trees claim in exactly the order of one B-tree of
    /// (priority, place, id), whatever order jobs arrive, leave and are claimed in.
    #[test]
    fn the_ready_queue_claims_in_key_order(
        ops in proptest::collection::vec((0..5u8, 0..10u8, -40..40i64, any::<u8>()), 1..300)
    ) {
        let mut queue = ReadyQueue::default();
        let mut model: BTreeSet<(u8, i64, JobId)> = BTreeSet::new();
        let mut removed: Vec<(u8, i64, JobId)> = Vec::new();
        let mut next = 0;
        for (op, priority, place, pick) in ops {
            match op {
                // Mostly in order, as ids grow; sometimes anywhere.
                0 => {
                    next += 1;
                    let key = (next, JobId(next as u64));
                    queue.insert(priority, key);
                    model.insert((priority, key.0, key.1));
                }
                1 => {
                    next += 1;
                    let key = (place, JobId(next as u64));
                    queue.insert(priority, key);
                    model.insert((priority, key.0, key.1));
                }
                2 => {
                    if let Some(&(p, o, id)) = model.iter().nth(usize::from(pick) % model.len().max(1)) {
                        prop_assert!(queue.remove(p, (o, id)));
                        model.remove(&(p, o, id));
                        prop_assert!(!queue.contains(p, (o, id)));
                        prop_assert!(!queue.remove(p, (o, id)), "removed twice");
                        removed.push((p, o, id));
                    }
                }
                // A removed key back again (its place kept in the deque, or not).
                3 if !removed.is_empty() => {
                    let (p, o, id) = removed.swap_remove(usize::from(pick) % removed.len());
                    queue.insert(p, (o, id));
                    model.insert((p, o, id));
                }
                _ => prop_assert_eq!(queue.pop(), model.pop_first().map(|(_, _, id)| id)),
            }
            prop_assert_eq!(queue.len, model.len());
            for &(p, o, id) in &model {
                prop_assert!(queue.contains(p, (o, id)));
            }
        }
    }
}

proptest! {
    /// The paged table holds what a plain map would, across page boundaries, and frees each page
    /// with its last record.
    #[test]
    fn the_job_table_is_a_map(ops in proptest::collection::vec((any::<bool>(), 0..300u64), 1..400)) {
        let mut table = table::JobTable::default();
        let mut model: BTreeMap<u64, ()> = BTreeMap::new();
        for (insert, id) in ops {
            let key = JobId(id);
            if insert {
                let mut record = new_job("q", None, None).into_record(0);
                record.id = key;
                prop_assert_eq!(table.insert(key, record).is_some(), model.insert(id, ()).is_some());
            } else {
                prop_assert_eq!(table.remove(&key).map(|r| r.id), model.remove(&id).map(|()| key));
            }
            prop_assert_eq!(table.len(), model.len());
            prop_assert_eq!(table.get(&key).map(|r| r.id), model.get(&id).map(|()| key));
            let mut ids: Vec<u64> = table.values().map(|r| r.id.0).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
            prop_assert_eq!(table.pages(), model.keys().map(|id| id / table::PAGE as u64).collect::<BTreeSet<_>>().len());
        }
    }
}

/// Records given reserved ids and encoded outside the lock replay as enqueued ones do; a refused
/// reserved id is skipped, and ids continue past every reserved one after a restart.
#[test]
fn reserved_ids_and_outside_encodings_replay() {
    let mut store = JobStore::new(Limits::default(), true);
    let held = store.enqueue(new_job("q", None, Some("k")), 0).unwrap();
    let first = store.reserve_ids(3);
    assert_eq!(first, JobId(held.0 + 1));
    let mut results = Vec::new();
    for (i, unique) in [None, Some("k"), None].into_iter().enumerate() {
        let mut record = new_job("q", None, unique).into_record(0);
        record.id = JobId(first.0 + i as u64);
        record.order = record.id.0 as i64;
        let value = encode(&record);
        results.push(store.enqueue_encoded(record, Some(value), 0));
    }
    assert_eq!(results[0], Ok(first));
    assert!(matches!(results[1], Err(Refused::Duplicate { .. })), "{results:?}");
    assert_eq!(results[2], Ok(JobId(first.0 + 2)));
    store.check().unwrap();
    let next = store.enqueue(new_job("q", None, None), 0).unwrap();
    assert_eq!(next, JobId(first.0 + 3), "ids go on past the reserved block");
    let (recovered, bad) =
        JobStore::recover(Limits::default(), store.take_writes().into_iter().map(|w| (w.key, w.value)), 0);
    assert!(bad.is_empty());
    let ids = |s: &JobStore| s.all().into_iter().map(|r| (r.id, r.order, r.state)).collect::<Vec<_>>();
    assert_eq!(ids(&recovered), ids(&store));
    let mut recovered = recovered;
    assert!(recovered.enqueue(new_job("q", None, None), 0).unwrap() > next);
}

/// Reserved places count against `jobs_max` until they are used or given back.
#[test]
fn reserved_places_count_against_the_bound_until_used_or_given_back() {
    let mut store = JobStore::new(Limits { jobs_max: 10, ..Limits::default() }, true);
    let first = store.reserve(8).expect("room for 8");
    assert!(store.reserve(3).is_none(), "8 reserved and 3 more would pass 10");
    store.enqueue(new_job("q", None, None), 0).unwrap();
    store.enqueue(new_job("q", None, None), 0).unwrap();
    assert_eq!(store.enqueue(new_job("q", None, None), 0), Err(Refused::Full { max: 10 }));
    for i in 0..3 {
        let mut record = new_job("q", None, None).into_record(0);
        record.id = JobId(first.0 + i);
        assert_eq!(store.enqueue_reserved(record, 0), JobId(first.0 + i));
    }
    store.unreserve(5);
    assert!(store.reserve(6).is_none(), "5 jobs in the store");
    assert!(store.reserve(5).is_some(), "the unused places were given back");
    store.check().unwrap();
    assert_eq!(store.get(first).unwrap().order, first.0 as i64, "a reserved job's place is its id");
}
