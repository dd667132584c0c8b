//! One simulated run of the built-in scenario: 1,000 messages, every fault kind on, one thread.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tubemail::DeliveryMode;
use tubemail_sim::{run, FaultPlan, Scenario};

fn simulated_run(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim");
    group.sample_size(30).measurement_time(Duration::from_secs(5));
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        let scenario = Scenario { mode, messages: 1000, plan: FaultPlan::all(), ..Default::default() };
        let mut seed = 0;
        group.bench_function(format!("run-1000-all-faults-{mode:?}"), |b| {
            b.iter(|| {
                seed += 1;
                run(&scenario, seed)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, simulated_run);

/// The same allocator as the `tubemail` command.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
criterion_main!(benches);
