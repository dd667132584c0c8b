//! The fan-out shape (1 publisher, 4 queues, 8 keys, 64-byte payloads) through tubemail in both
//! delivery modes, and the raw crossbeam-channel baseline of the same shape, in one run; the ratios
//! are printed at the end.

use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use tubemail::DeliveryMode;
use tubemail_bench::{fanout_baseline, fanout_deliveries, fanout_tubemail, Measurement};

const MESSAGES: u64 = 100_000;
const PAYLOAD: usize = 64;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(fanout_deliveries(MESSAGES)));
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    // Each run sets up its threads or its broker first; only the publishing and delivering is timed.
    group.bench_function("baseline-crossbeam", |b| {
        b.iter_custom(|n| timed(n, || fanout_baseline(MESSAGES, PAYLOAD)))
    });
    group.bench_function("tubemail-at-most-once", |b| {
        b.iter_custom(|n| timed(n, || fanout_tubemail(MESSAGES, PAYLOAD, DeliveryMode::AtMostOnce)))
    });
    group.bench_function("tubemail-at-least-once", |b| {
        b.iter_custom(|n| timed(n, || fanout_tubemail(MESSAGES, PAYLOAD, DeliveryMode::AtLeastOnce)))
    });
    group.finish();
}

fn timed(iters: u64, run: impl Fn() -> Measurement) -> Duration {
    (0..iters).map(|_| run().elapsed).sum()
}

/// Interleaves the three systems and takes each one's median, so that the ratios come from one run.
fn ratios() {
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    let (mut base, mut amo, mut alo) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        let rate = |m: Measurement| m.deliveries_per_sec();
        base.push(rate(fanout_baseline(MESSAGES, PAYLOAD)));
        amo.push(rate(fanout_tubemail(MESSAGES, PAYLOAD, DeliveryMode::AtMostOnce)));
        alo.push(rate(fanout_tubemail(MESSAGES, PAYLOAD, DeliveryMode::AtLeastOnce)));
    }
    let (base, amo, alo) = (median(base), median(amo), median(alo));
    println!("fanout ratios (median of 7 interleaved runs, {MESSAGES} messages of {PAYLOAD} B):");
    println!("  baseline-crossbeam      {:>12.0} deliveries/s", base);
    println!("  tubemail at-most-once   {:>12.0} deliveries/s  {:.2}x baseline", amo, amo / base);
    println!("  tubemail at-least-once  {:>12.0} deliveries/s  {:.2}x baseline", alo, alo / base);
}

criterion_group!(benches, fanout);

/// The same allocator as the `tubemail` command, for the baseline and tubemail alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    benches();
    ratios();
    Criterion::default().configure_from_args().final_summary();
}
