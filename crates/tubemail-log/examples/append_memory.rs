//! Appends 100-byte records to a stream in memory from one producer and prints the rate: the
//! smallest program to profile the append path with (`perf record`).

use tubemail_log::{Append, LogDir, StreamConfig};

fn main() {
    let records: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let log = LogDir::memory();
    let stream = log.stream("s", StreamConfig::default()).expect("a stream in memory");
    let value = [0xAB_u8; 100];
    let start = std::time::Instant::now();
    for i in 0..records {
        stream
            .append(Append { key: Some(b"key1"), value: Some(&value), timestamp: i as i64 })
            .expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{records} appends in {secs:.3} s: {:.0}/s", records as f64 / secs);
}
