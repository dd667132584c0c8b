//! `tubemail bench`: scenarios measured against a raw baseline of the same shape, in one run.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tubemail::routing::{validate_key, TopicKind};
use tubemail::{DeliveryMode, Topology};
use tubemail_bench::shapes::{self, Shape};
use tubemail_bench::{fanout_baseline, fanout_tubemail, Measurement};

/// Runs of each system in throughput scenarios; the median is reported.
const RUNS: usize = 5;

/// What to measure and how to print it.
pub(crate) struct BenchArgs {
    pub(crate) scenario: &'static str,
    pub(crate) messages: u64,
    pub(crate) payload: usize,
    pub(crate) modes: Vec<DeliveryMode>,
    pub(crate) json: bool,
    pub(crate) peers: bool,
    pub(crate) on: Option<String>,
    pub(crate) plot: Option<PathBuf>,
    pub(crate) rate: u64,
    pub(crate) topology: Option<PathBuf>,
    pub(crate) keys: Option<PathBuf>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<(), String> {
    check(args)?;
    // A spinner with the elapsed time on a terminal (indicatif hides it when stderr is not one, as in
    // CI); none with --json.
    let progress = (!args.json).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("bench {}", args.scenario));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let results = run_scenario(args);
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let results = results?;
    if let Some(path) = &args.plot {
        super::plot::draw(path, args.scenario, &results)?;
    }
    if args.json {
        println!("{}", json!({ "scenario": args.scenario, "results": results }));
    } else {
        print_table(args, &results);
    }
    Ok(())
}

fn run_scenario(args: &BenchArgs) -> Result<Vec<Value>, String> {
    if let Some(url) = &args.on {
        return remote_fanout(args, url);
    }
    Ok(match args.scenario {
        "fanout" => throughput(args, Shaped::Fanout)?,
        "work-queue" => throughput(args, Shaped::Shape(shapes::work_queue()))?,
        "custom" => throughput(args, Shaped::Shape(custom_shape(args)?))?,
        "wide" => wide(args),
        "bindings" => bindings(args),
        "latency" => latency(args),
        "memory" => memory(args),
        "arbiters" => arbiters(args),
        "isolation" => isolation(),
        "log" => log(args)?,
        "jobs" => jobs(args)?,
        other => return Err(format!("unknown scenario {other:?}")),
    })
}

/// Refuses what a scenario cannot run as asked, before running anything.
fn check(args: &BenchArgs) -> Result<(), String> {
    const LATENCY_RUN_MAX_SECS: u64 = 120;
    match args.scenario {
        "memory" if args.messages >= tubemail::topology::DEPTH_MAX_LIMIT as u64 => Err(format!(
            "memory queues --messages in one queue: at most {} (a queue's depth_max limit)",
            tubemail::topology::DEPTH_MAX_LIMIT - 1
        )),
        "log" if args.messages > LOG_RECORDS_MAX => Err(format!(
            "log appends --messages records per run and reopens a log of as many: at most {LOG_RECORDS_MAX}"
        )),
        "latency" if args.messages / args.rate > LATENCY_RUN_MAX_SECS => Err(format!(
            "latency would publish {} messages at {}/s for {} s; at most {LATENCY_RUN_MAX_SECS} s",
            args.messages,
            args.rate,
            args.messages / args.rate
        )),
        _ if args.on.is_some() && args.scenario != "fanout" => {
            Err(format!("--on runs the fanout scenario only, not {}", args.scenario))
        }
        _ => Ok(()),
    }?;
    if let Some(url) = &args.on {
        tubemail::remote::Endpoint::parse(url).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.plot {
        super::plot::check_path(path, args.scenario)?;
    }
    Ok(())
}

enum Shaped {
    Fanout,
    Shape(Shape),
}

fn throughput(args: &BenchArgs, shaped: Shaped) -> Result<Vec<Value>, String> {
    let (messages, payload) = (args.messages, args.payload);
    let mut base = Vec::new();
    let mut tube: Vec<Vec<Measurement>> = vec![Vec::new(); args.modes.len()];
    for _ in 0..RUNS {
        base.push(match &shaped {
            Shaped::Fanout => fanout_baseline(messages, payload),
            Shaped::Shape(s) => shapes::run_baseline(s, messages, payload),
        });
        for (i, mode) in args.modes.iter().enumerate() {
            tube[i].push(match &shaped {
                Shaped::Fanout => fanout_tubemail(messages, payload, *mode),
                Shaped::Shape(s) => shapes::run_tubemail(s, messages, payload, *mode),
            });
        }
    }
    let base = median(base);
    let mut results = vec![row("baseline", None, &base, None)];
    for (mode, runs) in args.modes.iter().zip(tube) {
        let m = median(runs);
        results.push(row(
            "tubemail",
            Some(*mode),
            &m,
            Some(m.deliveries_per_sec() / base.deliveries_per_sec()),
        ));
    }
    if args.peers {
        let mut peer_rows = peers(args, matches!(shaped, Shaped::Fanout));
        add_peer_ratios(&results, &mut peer_rows);
        results.extend(peer_rows);
    }
    Ok(results)
}

/// Gives each peer's row `tubemail_ratio`: tubemail's rate in the peer's delivery mode over the
/// peer's (issue #4's targets), where both rates are known and the peer's is not zero.
fn add_peer_ratios(results: &[Value], peers: &mut [Value]) {
    for peer in peers {
        let tube = results.iter().find(|r| r["system"] == "tubemail" && r["mode"] == peer["mode"]);
        let rates =
            (tube.and_then(|t| t["deliveries_per_sec"].as_f64()), peer["deliveries_per_sec"].as_f64());
        if let (Some(tube), Some(rate)) = rates {
            if rate > 0.0 {
                peer["tubemail_ratio"] = json!(tube / rate);
            }
        }
    }
}

#[cfg(feature = "peers")]
fn peers(args: &BenchArgs, fanout: bool) -> Vec<Value> {
    use tubemail_bench::peers;
    if !fanout {
        eprintln!("--peers runs with the fanout scenario only");
        return Vec::new();
    }
    let (m, p) = (args.messages, args.payload);
    let runs: Vec<Result<peers::PeerResult, peers::PeerError>> = vec![
        peers::fanout_rabbitmq(m.min(50_000), p, false),
        peers::fanout_rabbitmq(m.min(50_000), p, true),
        peers::fanout_nats(m, p),
        peers::fanout_jetstream(m.min(50_000), p),
    ];
    runs.into_iter()
        .filter_map(|r| match r {
            Ok(r) => Some(json!({
                "system": r.system, "mode": r.mode, "messages": r.published, "deliveries": r.deliveries,
                "deliveries_per_sec": r.deliveries_per_sec(), "p50_us": r.p50_us, "p99_us": r.p99_us, "lost": r.lost,
            })),
            Err(e) => {
                eprintln!("{e}: carrying on without it");
                None
            }
        })
        .collect()
}

/// Messages per run on a remote broker, at most: a remote run is confirmed publish by publish.
#[cfg(feature = "peers")]
const REMOTE_MESSAGES_MAX: u64 = 50_000;

/// `bench fanout --on URL`: the shape through tubemail on the remote broker and through its own
/// client, in each mode; each tubemail row's `ratio_to_direct` is its rate over the client's.
#[cfg(feature = "peers")]
fn remote_fanout(args: &BenchArgs, url: &str) -> Result<Vec<Value>, String> {
    let messages = args.messages.min(REMOTE_MESSAGES_MAX);
    if messages < args.messages {
        eprintln!("--on: {messages} messages per run (a remote run is at most {REMOTE_MESSAGES_MAX})");
    }
    let mut results = Vec::new();
    for mode in &args.modes {
        let [tube, direct] = tubemail_bench::remote::fanout_remote(url, messages, args.payload, *mode)
            .map_err(|e| e.to_string())?;
        let row = |r: &tubemail_bench::peers::PeerResult| {
            json!({
                "system": r.system, "mode": r.mode, "messages": r.published, "deliveries": r.deliveries,
                "deliveries_per_sec": r.deliveries_per_sec(), "p50_us": r.p50_us, "p99_us": r.p99_us, "lost": r.lost,
            })
        };
        let mut t = row(&tube);
        if direct.deliveries_per_sec() > 0.0 {
            t["ratio_to_direct"] = json!(tube.deliveries_per_sec() / direct.deliveries_per_sec());
        }
        results.extend([t, row(&direct)]);
    }
    Ok(results)
}

#[cfg(not(feature = "peers"))]
fn remote_fanout(_args: &BenchArgs, _url: &str) -> Result<Vec<Value>, String> {
    Err("this build has no remote clients: cargo run --release --features peers -- bench fanout --on URL"
        .into())
}

#[cfg(not(feature = "peers"))]
fn peers(_args: &BenchArgs, _fanout: bool) -> Vec<Value> {
    eprintln!("this build has no peer clients: cargo run --release --features peers -- bench fanout --peers");
    Vec::new()
}

fn wide(args: &BenchArgs) -> Vec<Value> {
    let mode = args.modes[0];
    let mut results = Vec::new();
    for queues in [1_usize, 10, 100, 1000] {
        let shape = shapes::wide(queues);
        // About the same number of deliveries at every width.
        let messages = (args.messages / queues as u64).max(200);
        let base = shapes::run_baseline(&shape, messages, args.payload);
        let tube = shapes::run_tubemail(&shape, messages, args.payload, mode);
        let ratio = tube.deliveries_per_sec() / base.deliveries_per_sec();
        let mut b = row("baseline", None, &base, None);
        b["queues"] = json!(queues);
        let mut t = row("tubemail", Some(mode), &tube, Some(ratio));
        t["queues"] = json!(queues);
        results.extend([b, t]);
    }
    results
}

fn bindings(args: &BenchArgs) -> Vec<Value> {
    let lookups = args.messages.max(100_000);
    let mut results = Vec::new();
    for count in [10_usize, 1_000, 100_000] {
        let (cached, trie, scan, scans) = shapes::bindings(count, lookups);
        results.push(
            json!({"system": "baseline", "mode": null, "bindings": count, "deliveries_per_sec": scan,
            "lookups": scans, "p50_us": null, "p99_us": null, "lost": 0,
            "what": format!("routes/s, scanning every binding ({scans} lookups timed)")}),
        );
        results.push(
            json!({"system": "tubemail", "mode": null, "bindings": count, "deliveries_per_sec": cached,
            "lookups": lookups, "uncached_routes_per_sec": trie, "p50_us": null, "p99_us": null, "lost": 0,
            "ratio_to_baseline": cached / scan,
            "what": format!("routes/s through the route cache and trie ({lookups} lookups timed)")}),
        );
    }
    results
}

fn latency(args: &BenchArgs) -> Vec<Value> {
    let messages = args.messages;
    let mut results = Vec::new();
    let mut push = |system: &str, mode: Option<DeliveryMode>, run: (hdrhistogram::Histogram<u64>, f64)| {
        let (h, achieved) = run;
        results.push(json!({
            "system": system, "mode": mode.map(DeliveryMode::as_str), "rate": args.rate, "messages": h.len(),
            "deliveries_per_sec": achieved, "requested_rate": args.rate, "lost": messages.saturating_sub(h.len()),
            "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
            "distribution": (1..=100).map(|p| h.value_at_quantile(f64::from(p) / 100.0)).collect::<Vec<_>>(),
        }));
    };
    let timed = |run: &dyn Fn() -> hdrhistogram::Histogram<u64>| {
        let start = std::time::Instant::now();
        let h = run();
        let rate = h.len() as f64 / start.elapsed().as_secs_f64();
        (h, rate)
    };
    push("baseline", None, timed(&|| shapes::latency_baseline(args.rate, messages)));
    for mode in &args.modes {
        push("tubemail", Some(*mode), timed(&|| shapes::latency_tubemail(args.rate, messages, *mode)));
    }
    results
}

/// CPU-bound handlers on 8 queues: one arbiter is the baseline, one per core is tubemail's default.
fn arbiters(args: &BenchArgs) -> Vec<Value> {
    use tubemail_bench::placement;
    let work = std::time::Duration::from_micros(20);
    let cores = std::thread::available_parallelism().map_or(1, usize::from).min(tubemail::ARBITERS_MAX);
    let messages = args.messages.min(100_000);
    let mut one = Vec::new();
    let mut many = Vec::new();
    for _ in 0..RUNS.min(3) {
        one.push(placement::cpu_bound(1, messages, work));
        many.push(placement::cpu_bound(cores, messages, work));
    }
    let (one, many) = (median(one), median(many));
    let mut base = row("tubemail", None, &one, None);
    base["system"] = json!("1 arbiter");
    let mut spread = row("tubemail", None, &many, Some(many.deliveries_per_sec() / one.deliveries_per_sec()));
    spread["system"] = json!(format!("{cores} arbiters"));
    vec![base, spread]
}

/// A blocking handler on one queue; the other queue's latency, on one arbiter and one per core.
fn isolation() -> Vec<Value> {
    use tubemail_bench::placement;
    let run = std::time::Duration::from_secs(3);
    let cores = std::thread::available_parallelism().map_or(1, usize::from).min(tubemail::ARBITERS_MAX);
    [1, cores]
        .into_iter()
        .map(|arbiters| {
            let h = placement::isolation(arbiters, run);
            json!({
                "system": format!("{arbiters} arbiter{}", if arbiters == 1 { "" } else { "s" }),
                "mode": null, "messages": h.len(), "deliveries_per_sec": null, "lost": 0,
                "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
            })
        })
        .collect()
}

fn memory(args: &BenchArgs) -> Vec<Value> {
    let r = tubemail_bench::memory::measure(args.messages, args.payload, 10_000, 1_000);
    vec![json!({
        "system": "tubemail", "mode": null, "deliveries_per_sec": null, "p50_us": null, "p99_us": null, "lost": 0,
        "bytes_per_queued_message": r.per_queued_message, "payload": r.payload,
        "overhead_per_queued_message": r.overhead_per_message(), "bytes_per_idle_queue": r.per_idle_queue,
        "bytes_per_idle_subscriber": r.per_idle_subscriber, "peak_rss": r.peak_rss,
    })]
}

/// Runs of each measurement of the log scenario, interleaved; the median is reported.
const LOG_RUNS: usize = 3;
/// The most records the log scenario takes (about 2.1 GB of frames at 100-byte values, held in
/// memory by the in-memory runs).
const LOG_RECORDS_MAX: u64 = 16_000_000;

/// The event log: appends in memory and under each fsync policy against raw writes of the same frames
/// (median of [`LOG_RUNS`] interleaved runs), a reader keeping up in memory, a reopen, and the peers.
fn log(args: &BenchArgs) -> Result<Vec<Value>, String> {
    use tubemail_bench::log::{self as bench, Fsync, LogRun, IN_FLIGHT};
    let (n, p) = (args.messages, args.payload);
    let mut rounds: Vec<Vec<LogRun>> = Vec::new();
    for _ in 0..LOG_RUNS {
        let mut round = vec![bench::tubemail(None, 1, n, p)?];
        round.push(bench::consume(n, p)?.1);
        for fsync in [Fsync::Never, Fsync::Interval] {
            round.push(bench::baseline(fsync, n, p)?);
            round.push(bench::tubemail(Some(fsync), 1, n, p)?);
        }
        round.push(bench::baseline(Fsync::Always, n, p)?);
        for in_flight in IN_FLIGHT {
            round.push(bench::tubemail(Some(Fsync::Always), in_flight, n, p)?);
        }
        rounds.push(round);
    }
    // The median of each measurement across the rounds.
    let runs: Vec<LogRun> = (0..rounds[0].len())
        .map(|i| {
            let mut of: Vec<LogRun> = rounds.iter().map(|r| r[i].clone()).collect();
            of.sort_by(|a, b| a.records_per_sec().total_cmp(&b.records_per_sec()));
            of.swap_remove(of.len() / 2)
        })
        .collect();
    let mut results: Vec<Value> = runs.iter().map(log_row).collect();
    for i in 0..results.len() {
        let r = &results[i];
        if r["system"] != "tubemail" || r["op"] != "append" {
            continue;
        }
        let base = results.iter().find(|b| b["system"] == "baseline" && b["fsync"] == r["fsync"]);
        let ratio = base.and_then(|b| Some(r["records_per_sec"].as_f64()? / b["records_per_sec"].as_f64()?));
        results[i]["ratio_to_baseline"] = json!(ratio.filter(|x| x.is_finite()));
    }
    let reopen = bench::reopen(n, p)?;
    results.push(json!({
        "system": "tubemail", "fsync": "never", "op": "reopen", "in_flight": null,
        "records": reopen.records, "records_per_sec": null, "bytes_per_sec": null, "lost": reopen.lost,
        "syncs": null, "ratio_to_baseline": null,
        "reopen_secs": reopen.elapsed.as_secs_f64(), "reopened_bytes": reopen.bytes,
        "reopened_records": reopen.records, "segments": reopen.segments,
        "from_checkpoint": reopen.from_checkpoint, "index_entries": reopen.index_entries,
        "index_bytes": reopen.index_bytes(), "index_ratio": reopen.index_ratio(),
    }));
    if args.peers {
        let mut peer_rows: Vec<Value> = log_peers(args).iter().map(log_row).collect();
        add_log_peer_ratios(&results, &mut peer_rows);
        results.extend(peer_rows);
    }
    Ok(results)
}

fn log_row(r: &tubemail_bench::log::LogRun) -> Value {
    let mut row = json!({
        "system": r.system, "fsync": r.fsync, "op": r.op, "in_flight": r.in_flight, "records": r.records,
        "records_per_sec": r.records_per_sec(), "bytes_per_sec": r.bytes_per_sec(),
        "secs": r.elapsed.as_secs_f64(), "lost": r.lost, "syncs": r.syncs, "ratio_to_baseline": null,
    });
    if let Some(over) = r.over_producer {
        row["over_producer"] = json!(over);
        row["producer_records_per_sec"] = json!(r.records_per_sec() * over);
        row["kept_up"] = json!(r.kept_up());
    }
    row
}

#[cfg(feature = "peers")]
fn log_peers(args: &BenchArgs) -> Vec<tubemail_bench::log::LogRun> {
    use tubemail_bench::log;
    let (n, p) = (args.messages, args.payload);
    let mut runs = Vec::new();
    for in_flight in [1, 256] {
        match log::jetstream(in_flight, n, p) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("{e}: carrying on without it");
                break;
            }
        }
    }
    for in_flight in [1, 256] {
        match log::redis_streams(in_flight, n, p) {
            Ok((append, consume)) => {
                runs.push(append);
                // The reader of the larger run (it reads as many records or more).
                if in_flight == 256 {
                    runs.push(consume);
                }
            }
            Err(e) => {
                eprintln!("{e}: carrying on without it");
                break;
            }
        }
    }
    runs
}

#[cfg(not(feature = "peers"))]
fn log_peers(_args: &BenchArgs) -> Vec<tubemail_bench::log::LogRun> {
    eprintln!("this build has no peer clients: cargo run --release --features peers -- bench log --peers");
    Vec::new()
}

/// Gives each peer's row `tubemail_ratio`: tubemail's rate over the peer's, tubemail's row being the
/// one of the same durability (fsync) and operation with the most appends in flight that the peer
/// had too (a reader is compared with tubemail's reader).
fn add_log_peer_ratios(results: &[Value], peers: &mut [Value]) {
    for peer in peers {
        let tube = results
            .iter()
            .filter(|r| r["system"] == "tubemail" && r["op"] == peer["op"])
            .filter(|r| peer["op"] == "consume" || r["fsync"] == peer["fsync"])
            .filter(|r| r["in_flight"].as_u64() <= peer["in_flight"].as_u64())
            .max_by_key(|r| r["in_flight"].as_u64());
        let rates = (tube.and_then(|t| t["records_per_sec"].as_f64()), peer["records_per_sec"].as_f64());
        if let (Some(t), Some(rate)) = (tube, rates.0.zip(rates.1)) {
            if rate.1 > 0.0 {
                peer["tubemail_ratio"] = json!(rate.0 / rate.1);
                peer["tubemail_row"] = json!(format!(
                    "{} {} in flight {}",
                    t["fsync"].as_str().unwrap_or("-"),
                    t["op"].as_str().unwrap_or("-"),
                    t["in_flight"]
                ));
            }
        }
    }
}

fn print_log_table(args: &BenchArgs, results: &[Value]) {
    let frame = tubemail_bench::log::frame_bytes(args.payload);
    println!(
        "log: up to {} records of {} + {} B ({frame} B framed), one partition, one appender (median of {LOG_RUNS} interleaved runs; runs under always stop after {} s)",
        args.messages,
        tubemail_bench::log::KEY_BYTES,
        args.payload,
        tubemail_bench::log::ALWAYS_BUDGET.as_secs_f64()
    );
    println!(
        "{:<15} {:<9} {:<8} {:>9} {:>11} {:>13} {:>9} {:>7} {:>9} {:>8}",
        "system", "fsync", "op", "in flight", "records", "records/s", "MB/s", "lost", "syncs", "ratio"
    );
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    for r in results.iter().filter(|r| r["op"] != "reopen") {
        println!(
            "{:<15} {:<9} {:<8} {:>9} {:>11} {:>13} {:>9} {:>7} {:>9} {:>8}",
            r["system"].as_str().unwrap_or_default(),
            r["fsync"].as_str().unwrap_or("-"),
            r["op"].as_str().unwrap_or("-"),
            num(&r["in_flight"]),
            num(&r["records"]),
            num(&r["records_per_sec"]),
            r["bytes_per_sec"].as_f64().map(|b| format!("{:.1}", b / 1e6)).unwrap_or_else(|| "-".into()),
            num(&r["lost"]),
            num(&r["syncs"]),
            r["ratio_to_baseline"].as_f64().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
        );
        if let (Some(over), Some(kept_up)) = (r["over_producer"].as_f64(), r["kept_up"].as_bool()) {
            println!(
                "  a reader thread had every record {over:.2}x the producer's time after the first append ({} appends/s beside it): {} (within {}x)",
                num(&r["producer_records_per_sec"]),
                if kept_up { "kept up" } else { "fell behind" },
                tubemail_bench::log::KEPT_UP_FACTOR
            );
        }
    }
    for r in results.iter().filter(|r| r["op"] == "reopen") {
        println!(
            "reopen: {} records, {} B in {} segment(s), reopened in {:.3} s{}; index {} B in memory, {:.2}% of the data; lost {}",
            num(&r["reopened_records"]),
            num(&r["reopened_bytes"]),
            num(&r["segments"]),
            r["reopen_secs"].as_f64().unwrap_or_default(),
            if r["from_checkpoint"] == true { " (from the clean close's checkpoint, page cache warm)" } else { "" },
            num(&r["index_bytes"]),
            r["index_ratio"].as_f64().unwrap_or_default() * 100.0,
            num(&r["lost"]),
        );
    }
    for r in results.iter().filter(|r| r.get("tubemail_ratio").is_some()) {
        println!(
            "tubemail {} against {} {} in flight {}: {:.1}x",
            r["tubemail_row"].as_str().unwrap_or("-"),
            r["system"].as_str().unwrap_or_default(),
            r["op"].as_str().unwrap_or("-"),
            r["in_flight"],
            r["tubemail_ratio"].as_f64().unwrap_or_default()
        );
    }
}

fn custom_shape(args: &BenchArgs) -> Result<Shape, String> {
    let (Some(topology), Some(keys)) = (&args.topology, &args.keys) else {
        return Err("--topology FILE and --keys FILE go together".to_owned());
    };
    let topology = Topology::load(topology).map_err(|e| e.to_string())?;
    let keys = read_keys(keys)?;
    let (topic, spec) = topology.topics.iter().next().ok_or("the topology declares no topic")?;
    let queues: Vec<String> = topology.queues.keys().cloned().collect();
    let index = |q: &str| queues.iter().position(|n| n == q).expect("validated queue");
    let bindings = topology
        .bindings
        .iter()
        .filter(|b| &b.topic == topic)
        .filter_map(|b| Some((index(b.target.queue()?), b.key.clone())))
        .collect();
    Ok(Shape { kind: spec.kind, queues, bindings, consumers: 1, keys, arbiters: None })
}

fn read_keys(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let keys: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    for (i, key) in keys.iter().enumerate() {
        validate_key(key).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
    }
    if keys.is_empty() {
        return Err(format!("{}: no routing keys", path.display()));
    }
    Ok(keys)
}

fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.deliveries_per_sec().total_cmp(&b.deliveries_per_sec()));
    runs[runs.len() / 2]
}

fn row(system: &str, mode: Option<DeliveryMode>, m: &Measurement, ratio: Option<f64>) -> Value {
    json!({
        "system": system,
        "mode": mode.map(DeliveryMode::as_str),
        "messages": m.published,
        "deliveries": m.deliveries,
        "deliveries_per_sec": m.deliveries_per_sec(),
        "p50_us": null,
        "p99_us": null,
        "lost": 0,
        "ratio_to_baseline": ratio,
    })
}

fn print_table(args: &BenchArgs, results: &[Value]) {
    if args.scenario == "log" {
        print_log_table(args, results);
        return;
    }
    if args.scenario == "jobs" {
        print_jobs_table(args, results);
        return;
    }
    match args.scenario {
        "fanout" if args.on.is_some() => println!(
            "fanout on {}: {} messages of {} B, through tubemail and through the broker's client directly (ratio: tubemail over direct)",
            tubemail::remote::Endpoint::parse(args.on.as_deref().unwrap_or_default())
                .map(|e| e.backend())
                .unwrap_or("the remote broker"),
            results.first().and_then(|r| r["messages"].as_u64()).unwrap_or(args.messages),
            args.payload
        ),
        "latency" => println!(
            "latency: {} messages of {} B at {}/s requested (achieved rate per row)",
            args.messages, args.payload, args.rate
        ),
        "memory" => println!("memory: {} queued messages of {} B", args.messages, args.payload),
        "bindings" => println!(
            "bindings: {} routing lookups through tubemail, fewer through the scanning baseline (each row says), no messages delivered",
            args.messages.max(100_000)
        ),
        "arbiters" => println!(
            "arbiters: {} messages over 8 queues, handlers computing 20 µs each (median of 3 runs)",
            args.messages.min(100_000)
        ),
        "isolation" => println!("isolation: 3 s of a queue fed every 2 ms beside a handler blocking 200 ms"),
        _ => println!(
            "{}: {} messages of {} B (median of {RUNS} interleaved runs)",
            args.scenario, args.messages, args.payload
        ),
    }
    println!(
        "{:<17} {:<14} {:>9} {:>15} {:>9} {:>9} {:>9} {:>8}",
        "system", "mode", "size", "rate/s", "p50 µs", "p99 µs", "lost", "ratio"
    );
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    for r in results {
        let size = r.get("queues").or(r.get("bindings")).map(num).unwrap_or_else(|| "-".into());
        println!(
            "{:<17} {:<14} {:>9} {:>15} {:>9} {:>9} {:>9} {:>8}",
            r["system"].as_str().unwrap_or_default(),
            r["mode"].as_str().unwrap_or("-"),
            size,
            num(&r["deliveries_per_sec"]),
            num(&r["p50_us"]),
            num(&r["p99_us"]),
            num(&r["lost"]),
            r.get("ratio_to_baseline")
                .or(r.get("ratio_to_direct"))
                .and_then(Value::as_f64)
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
        );
        if let (Some(what), Some(_)) = (r.get("what").and_then(Value::as_str), r.get("lookups")) {
            println!("  {what}");
        }
        if let Some(bytes) = r.get("bytes_per_queued_message") {
            println!("  per queued message {} B ({} B over the payload), per idle queue {} B, per idle subscriber {} B, peak RSS {} MiB",
                num(bytes), num(&r["overhead_per_queued_message"]), num(&r["bytes_per_idle_queue"]),
                num(&r["bytes_per_idle_subscriber"]), r["peak_rss"].as_u64().unwrap_or(0) / (1 << 20));
        }
    }
    for r in results.iter().filter(|r| r.get("tubemail_ratio").is_some()) {
        println!(
            "tubemail {} against {}: {:.1}x",
            r["mode"].as_str().unwrap_or("-"),
            r["system"].as_str().unwrap_or_default(),
            r["tubemail_ratio"].as_f64().unwrap_or_default()
        );
    }
    let _ = TopicKind::Topic;
}

/// Runs of each measurement of the jobs scenario, interleaved; the median is reported.
const JOBS_RUNS: usize = 3;
/// Scheduled jobs whose start delay is measured under load.
const JOBS_SCHEDULED: u64 = 2_000;

/// Background jobs: in memory and durable against the thread-pool baseline (median of
/// [`JOBS_RUNS`] interleaved runs), with the start delay of scheduled jobs under load.
fn jobs(args: &BenchArgs) -> Result<Vec<Value>, String> {
    use tubemail_bench::jobs as bench;
    let n = args.messages;
    let mut runs: [Vec<bench::JobsRun>; 3] = Default::default();
    for _ in 0..JOBS_RUNS {
        runs[0].push(bench::baseline(n));
        runs[1].push(bench::tubemail(false, n, JOBS_SCHEDULED)?);
        runs[2].push(bench::tubemail(true, n, JOBS_SCHEDULED)?);
    }
    let medians: Vec<bench::JobsRun> = runs
        .into_iter()
        .map(|mut of| {
            of.sort_by(|a, b| a.jobs_per_sec().total_cmp(&b.jobs_per_sec()));
            of.swap_remove(of.len() / 2)
        })
        .collect();
    let base = medians[0].jobs_per_sec();
    let row = |r: &bench::JobsRun| {
        json!({
            "system": r.system, "storage": r.storage, "jobs": r.jobs, "secs": r.elapsed.as_secs_f64(),
            "jobs_per_sec": r.jobs_per_sec(), "ratio_to_baseline": r.jobs_per_sec() / base,
            "p99_start_delay_us": r.p99_start_delay_us, "scheduled": r.scheduled,
            "workers": bench::workers(),
        })
    };
    let mut results: Vec<Value> = medians.iter().map(row).collect();
    if args.peers {
        let durable = medians[2].jobs_per_sec();
        results.extend(jobs_peers(n).iter().map(|r| {
            let mut peer = row(r);
            peer["tubemail_ratio"] = json!(durable / r.jobs_per_sec());
            peer
        }));
    }
    Ok(results)
}

/// Sidekiq and apalis, one run each of at most [`tubemail_bench::jobs::SIDEKIQ_JOBS`] and
/// [`tubemail_bench::jobs::APALIS_JOBS`] jobs; a peer that is not installed or does not answer is
/// said so on stderr and left out.
#[cfg(feature = "peers")]
fn jobs_peers(n: u64) -> Vec<tubemail_bench::jobs::JobsRun> {
    use tubemail_bench::jobs as bench;
    let mut runs = Vec::new();
    for run in [bench::sidekiq(n.min(bench::SIDEKIQ_JOBS)), bench::apalis(n.min(bench::APALIS_JOBS))] {
        match run {
            Ok(run) => runs.push(run),
            Err(e) => eprintln!("{e}: carrying on without it"),
        }
    }
    runs
}

#[cfg(not(feature = "peers"))]
fn jobs_peers(_n: u64) -> Vec<tubemail_bench::jobs::JobsRun> {
    eprintln!(
        "this build has no peer clients: cargo run --release -p tubemail-cli --features peers -- bench jobs --peers"
    );
    Vec::new()
}

fn print_jobs_table(args: &BenchArgs, results: &[Value]) {
    let peers: Vec<String> = results
        .iter()
        .filter(|r| r.get("tubemail_ratio").is_some())
        .map(|r| format!("{} with {}", r["system"].as_str().unwrap_or_default(), r["jobs"]))
        .collect();
    let peers = if peers.is_empty() {
        String::new()
    } else {
        format!("; {}, one run each, same batches and workers, on Redis", peers.join(" and "))
    };
    println!(
        "jobs: {} no-op jobs, enqueued in batches of {}, at most {} ahead of the workers, and performed by {} workers, with {JOBS_SCHEDULED} scheduled jobs under that load (median of {JOBS_RUNS} interleaved runs{peers})",
        args.messages,
        tubemail_bench::jobs::BATCH,
        tubemail_bench::jobs::BACKLOG,
        tubemail_bench::jobs::workers()
    );
    println!(
        "{:<10} {:<8} {:>10} {:>12} {:>8} {:>22}",
        "system", "storage", "jobs", "jobs/s", "ratio", "p99 start delay µs"
    );
    for r in results {
        println!(
            "{:<10} {:<8} {:>10} {:>12.0} {:>7.2}x {:>22}",
            r["system"].as_str().unwrap_or_default(),
            r["storage"].as_str().unwrap_or_default(),
            r["jobs"],
            r["jobs_per_sec"].as_f64().unwrap_or(0.0),
            r["ratio_to_baseline"].as_f64().unwrap_or(0.0),
            r["p99_start_delay_us"].as_u64().map_or_else(|| "-".into(), |d| d.to_string()),
        );
    }
    for r in results.iter().filter(|r| r.get("tubemail_ratio").is_some()) {
        let (system, target) = match r["system"].as_str().unwrap_or_default() {
            "sidekiq" => ("sidekiq", 20.0),
            other => (other, 10.0),
        };
        let ratio = r["tubemail_ratio"].as_f64().unwrap_or_default();
        println!(
            "tubemail durable against {system} ({} jobs, one run, its jobs kept in Redis): {ratio:.1}x (target >= {target}x: {})",
            r["jobs"],
            if ratio >= target { "met" } else { "missed" }
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::add_peer_ratios;

    #[test]
    fn each_peer_is_compared_with_tubemail_in_its_own_mode() {
        let results = [
            json!({"system": "baseline", "mode": null, "deliveries_per_sec": 10.0}),
            json!({"system": "tubemail", "mode": "at-most-once", "deliveries_per_sec": 900.0}),
            json!({"system": "tubemail", "mode": "at-least-once", "deliveries_per_sec": 600.0}),
        ];
        let mut peers = [
            json!({"system": "rabbitmq-ack", "mode": "at-least-once", "deliveries_per_sec": 3.0}),
            json!({"system": "nats", "mode": "at-most-once", "deliveries_per_sec": 300.0}),
            json!({"system": "stalled", "mode": "at-most-once", "deliveries_per_sec": 0.0}),
        ];
        add_peer_ratios(&results, &mut peers);
        assert_eq!(peers[0]["tubemail_ratio"], json!(200.0));
        assert_eq!(peers[1]["tubemail_ratio"], json!(3.0));
        assert!(peers[2].get("tubemail_ratio").is_none(), "no ratio to a rate of zero");
    }
}
