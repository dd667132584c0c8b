//! A loom model of the journal's outbox (`src/outbox.rs`), explored over every interleaving of its
//! threads: writes are numbered under the store's lock and handed in under it; the appender's thread
//! waits for writes and drains them; a caller that must see its write in the journal drains too.
//! Each drain holds the appender's lock while it takes what is pending and appends it.
//!
//! Checked: the journal gets every write exactly once and in the store's order (so no record can
//! follow its own tombstone), a caller's drain returns only once its write is in the journal, and
//! the thread ends when the outbox stops. The broken variant takes what is pending before it holds
//! the appender's lock, and loom finds an interleaving where two drains append out of order.

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

#[derive(Default)]
struct Pending {
    writes: Vec<u32>,
    stopped: bool,
}

#[derive(Default)]
struct Outbox {
    /// The store's lock, holding the next write's number.
    store: Mutex<u32>,
    pending: Mutex<Pending>,
    more: Condvar,
    /// The appender's lock, holding the journal.
    journal: Mutex<Vec<u32>>,
}

impl Outbox {
    /// A change of the store: numbered and handed in under the store's lock.
    fn change(&self) -> u32 {
        let mut store = self.store.lock().unwrap();
        let n = *store;
        *store += 1;
        self.pending.lock().unwrap().writes.push(n);
        self.more.notify_one();
        n
    }

    fn drain(&self, broken: bool) {
        if broken {
            let taken = std::mem::take(&mut self.pending.lock().unwrap().writes);
            self.journal.lock().unwrap().extend(taken);
        } else {
            let mut journal = self.journal.lock().unwrap();
            let taken = std::mem::take(&mut self.pending.lock().unwrap().writes);
            journal.extend(taken);
        }
    }

    /// The appender's thread.
    fn run(&self, broken: bool) {
        loop {
            {
                let mut pending = self.pending.lock().unwrap();
                while pending.writes.is_empty() && !pending.stopped {
                    pending = self.more.wait(pending).unwrap();
                }
                if pending.stopped {
                    return;
                }
            }
            self.drain(broken);
        }
    }

    fn stop(&self) {
        self.pending.lock().unwrap().stopped = true;
        self.more.notify_all();
    }
}

fn model(broken: bool) {
    // Two preemptions per run cover the orders that matter here (a drain between another's take and
    // its append) and keep the exploration to seconds.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(move || {
        let outbox = Arc::new(Outbox::default());
        let appender = {
            let outbox = outbox.clone();
            thread::spawn(move || outbox.run(broken))
        };
        // A worker settling a job: hands in and goes on.
        let worker = {
            let outbox = outbox.clone();
            thread::spawn(move || {
                outbox.change();
            })
        };
        // A checkpoint: hands in, then drains, and must find its write in the journal.
        let mine = outbox.change();
        outbox.drain(broken);
        assert!(
            outbox.journal.lock().unwrap().contains(&mine),
            "a drain returned before its write was appended"
        );
        worker.join().unwrap();
        // The shutdown: stop the thread, then drain what is left.
        outbox.stop();
        appender.join().unwrap();
        outbox.drain(broken);
        let journal = outbox.journal.lock().unwrap().clone();
        assert_eq!(journal, [0, 1], "every write once, in the store's order");
    });
}

#[test]
fn the_journal_gets_every_write_once_in_the_stores_order() {
    model(false);
}

#[test]
#[should_panic(expected = "in the store's order")]
fn taking_the_writes_before_the_appenders_lock_appends_out_of_order() {
    model(true);
}
