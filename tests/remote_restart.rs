//! A remote broker restarted mid-run loses nothing confirmed: RabbitMQ is stopped and started
//! (`rabbitmqctl stop_app` / `start_app`), and NATS's server process is stopped and started again
//! with its own command line, while a publisher and a subscriber run; every publish that was
//! confirmed is delivered (at least once) after the client recovered its connection.
#![cfg(any(feature = "rabbitmq", feature = "nats"))]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tubemail::{Broker, Confirm, Delivery, Outcome, Topology};

#[cfg(feature = "rabbitmq")]
const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MESSAGES: u64 = 400;

#[cfg(feature = "rabbitmq")]
fn rabbitmqctl(args: &[&str]) {
    let out =
        Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs (RabbitMQ is installed)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[cfg(feature = "rabbitmq")]
#[actix::test]
async fn nothing_confirmed_is_lost_when_rabbitmq_restarts() {
    survive_a_rabbitmq_outage(Duration::from_secs(1)).await;
}

/// Down long enough that the publisher's and the subscriber's attempts to connect again fail many
/// times over (each is refused while nothing listens) before one succeeds.
#[cfg(feature = "rabbitmq")]
#[actix::test]
async fn nothing_confirmed_is_lost_when_rabbitmq_is_down_for_15_s() {
    survive_a_rabbitmq_outage(Duration::from_secs(15)).await;
}

/// One RabbitMQ restart at a time (the tests of one file run in parallel): each holds it from
/// before it checks that RabbitMQ is up until RabbitMQ is up again.
#[cfg(feature = "rabbitmq")]
static RABBITMQ_RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `rabbitmqctl stop_app`, `outage` later `start_app`, while a publisher and a subscriber run.
#[cfg(feature = "rabbitmq")]
async fn survive_a_rabbitmq_outage(outage: Duration) {
    let _one = RABBITMQ_RESTARTS.lock().await;
    let addr = "127.0.0.1:5672".parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "RabbitMQ is not running on {addr}: start it (this test runs against it in CI)"
    );
    survive_a_restart(RABBITMQ, move || {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(outage);
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await;
}

#[cfg(feature = "nats")]
#[actix::test]
async fn nothing_confirmed_is_lost_when_nats_restarts() {
    let addr = "127.0.0.1:4222".parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "NATS is not running on {addr}: start it (this test runs against it in CI)"
    );
    survive_a_restart("nats://127.0.0.1:4222", restart_nats_server).await;
}

/// Stops the machine's `nats-server` (SIGTERM: JetStream flushes its files) and starts it again with
/// the same command line, detached, then waits until it answers.
#[cfg(feature = "nats")]
fn restart_nats_server() {
    let pid = Command::new("pgrep").args(["-x", "nats-server"]).output().expect("pgrep runs");
    let pid = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .next()
        .expect("a nats-server process runs")
        .trim()
        .to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // `setsid -f` forks the server into a session of its own and returns: it outlives this test.
    let started = Command::new("setsid")
        .arg("-f")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("nats-server starts again");
    assert!(started.success(), "setsid {args:?}: {started}");
    let addr = "127.0.0.1:4222".parse().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nats-server did not come back on {addr}");
}

async fn survive_a_restart(url: &str, restart: impl FnOnce() + Send + 'static) {
    let backend = if url.starts_with("nats") { "nats" } else { "rabbitmq" };
    let p = format!("tmc_restart_{backend}_{}", std::process::id());
    let topology = Topology::from_toml_str(&format!(
        r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_q]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_q"
        key = "k"
        "#
    ))
    .unwrap();
    let broker = Broker::builder(topology.clone()).remote(url).connect().await.unwrap();
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::clone(&received);
    broker
        .subscribe_sync(&format!("{p}_q"), move |d: Delivery<u64>| {
            seen.lock().unwrap().insert(*d);
            Outcome::Ack
        })
        .await
        .unwrap();

    let publisher = {
        let (broker, topic) = (broker.clone(), format!("{p}_t"));
        tokio::spawn(async move {
            let (mut confirmed, mut failed) = (Vec::new(), 0_u64);
            for i in 0..MESSAGES {
                // A publish that failed is published again, as an at-least-once publisher does.
                loop {
                    match broker.publish(&topic, "k", i).await {
                        Ok(Confirm::Routed { .. }) => {
                            confirmed.push(i);
                            break;
                        }
                        Ok(other) => panic!("publish {i}: {other:?}"),
                        Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (confirmed, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(restart).await.unwrap();
    // Generous: how long the client takes to recover is the broker's and the client's (one CI run
    // took over 120 s on RabbitMQ, where a dozen runs take 13 s); what is tested is that nothing
    // confirmed is lost.
    let (confirmed, failed) = match tokio::time::timeout(Duration::from_secs(300), publisher).await {
        Ok(done) => done.unwrap(),
        Err(_) => {
            panic!("{backend}: the publisher did not get {MESSAGES} confirms within 300 s of the restart")
        }
    };
    assert_eq!(confirmed.len() as u64, MESSAGES);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<u64> = {
            let got = received.lock().unwrap();
            confirmed.iter().copied().filter(|i| !got.contains(i)).collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} confirmed messages never delivered after the restart (publishes failed and retried: {failed}): {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{backend} restart: {MESSAGES} confirmed, all delivered; {failed} publishes failed during the restart and were retried");
    broker.delete_queue(&format!("{p}_q")).await.unwrap();
    broker.shutdown(Duration::from_secs(2)).await;
}
