//! A loom model of the partition's wake-up of async waiters (`src/partition.rs`): an appender moves
//! the high watermark, fences, then wakes waiters only if it reads a waiter count above zero; a waiter
//! counts itself and registers with the `Notify`, fences, then reads the watermark, then sleeps. With
//! a `SeqCst` fence on both sides one of them always sees the other: no waiter sleeps past its record.
//! Without the fences (the broken variant below) loom finds the interleaving where the waiter sleeps
//! forever. (Loom models `SeqCst` fences, not `SeqCst` loads and stores, which is one reason the code
//! uses fences.)
//!
//! tokio's `Notify::notify_waiters` wakes only the waiters registered before it (`enable`); it is
//! modelled as a flag pair under a mutex.

use loom::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

#[derive(Default)]
struct Partition {
    acked: AtomicU64,
    waiting: AtomicUsize,
    /// (registered, notified)
    notify: Mutex<(bool, bool)>,
    woken: Condvar,
}

impl Partition {
    fn append(&self, fenced: bool) {
        self.acked.store(1, Ordering::Release);
        if fenced {
            fence(Ordering::SeqCst);
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            let mut n = self.notify.lock().unwrap();
            if n.0 {
                n.1 = true;
                self.woken.notify_all();
            }
        }
    }

    fn wait_for_first(&self, fenced: bool) {
        if self.acked.load(Ordering::Acquire) > 0 {
            return;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.notify.lock().unwrap().0 = true; // `enable`
        if fenced {
            fence(Ordering::SeqCst);
        }
        if self.acked.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut n = self.notify.lock().unwrap();
        while !n.1 {
            n = self.woken.wait(n).unwrap();
        }
    }
}

fn model(fenced: bool) {
    loom::model(move || {
        let p = Arc::new(Partition::default());
        let waiter = {
            let p = p.clone();
            thread::spawn(move || p.wait_for_first(fenced))
        };
        p.append(fenced);
        waiter.join().unwrap();
    });
}

#[test]
fn a_waiter_never_sleeps_past_an_acked_record() {
    model(true);
}

/// The broken variant, run in a child process: loom reports the deadlock by panicking, and its
/// threads' cleanup then aborts the process, which `#[should_panic]` cannot catch.
#[test]
#[ignore = "the child process of without_the_fences_a_waiter_can_sleep_forever"]
fn unfenced_model() {
    model(false);
}

#[test]
fn without_the_fences_a_waiter_can_sleep_forever() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "unfenced_model", "--test-threads=1", "--nocapture"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the broken model passed");
    assert!(stderr.contains("deadlock"), "loom should report the sleeping waiter:\n{stderr}");
}
