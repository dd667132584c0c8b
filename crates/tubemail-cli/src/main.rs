//! The `tubemail` command: a demo, a routing checker and a topology validator.

mod cli;

use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.measures_memory() {
        // Frees of blocks allocated before counting began would underflow: wrap and compare deltas.
        COUNTING.store(true, Ordering::Relaxed);
        tubemail_bench::memory::set_live_bytes_probe(|| LIVE.load(Ordering::Relaxed));
    }
    cli.run()
}

/// The command's allocator: mimalloc, where glibc's allocator measured as a fifth of the fan-out
/// benchmark, counting the live bytes for `tubemail bench memory`.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Counting costs a shared atomic per allocation, which skews the throughput scenarios: only
/// `tubemail bench memory` turns it on.
static COUNTING: AtomicBool = AtomicBool::new(false);

struct Counting;

// Safety: every call is forwarded to mimalloc unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // Safety: the caller's contract is passed on as it is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // Safety: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        // Safety: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}
