//! The hot paths for regressions: matching, routing, enqueue + dispatch + ack.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smallvec::SmallVec;
use tubemail::ids::QueueId;
use tubemail::internals::QueueBench;
use tubemail::routing::{pattern_matches, RoutingTable, TopicKind};
use tubemail::DeliveryMode;
use tubemail_bench::{FANOUT_BINDINGS, FANOUT_KEYS};

fn table() -> RoutingTable {
    let mut table = RoutingTable::new(TopicKind::Topic);
    for (i, (_, pattern)) in FANOUT_BINDINGS.iter().enumerate() {
        table.bind(QueueId(i as u32), pattern, 1).unwrap();
    }
    table
}

fn hot_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot");
    group.throughput(Throughput::Elements(FANOUT_KEYS.len() as u64));
    group.bench_function("match-reference-8-keys", |b| {
        b.iter(|| FANOUT_KEYS.iter().filter(|k| pattern_matches("orders.#.paid", k)).count())
    });
    let table = table();
    let mut out = SmallVec::new();
    group.bench_function("route-trie-8-keys", |b| {
        b.iter(|| {
            let mut n = 0;
            for key in FANOUT_KEYS {
                table.route(key, &mut out);
                n += out.len();
            }
            n
        })
    });
    group.throughput(Throughput::Elements(256));
    for mode in [DeliveryMode::AtMostOnce, DeliveryMode::AtLeastOnce] {
        let mut queue = QueueBench::new(mode, 0);
        group.bench_function(format!("enqueue-dispatch-ack-256-{mode:?}"), |b| b.iter(|| queue.cycle(256)));
    }
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
