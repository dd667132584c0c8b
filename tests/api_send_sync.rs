//! Compile-time checks that the public handles can cross threads, in the manner of tokio's
//! `tests/async_send_sync.rs`: each assertion is a closure that is type-checked and never run, so this
//! file fails to compile when a handle loses `Send` or `Sync`.
//!
//! The futures of the async methods are checked too: the broker's docs promise that its methods may
//! be called from any thread, which needs `Send` futures (for `tokio::spawn` on a multi-threaded
//! runtime).
#![allow(dead_code, unreachable_code, unused_variables, clippy::diverging_sub_expression)]

use std::time::Duration;

use tubemail::message::PayloadError;
use tubemail::queue::SettleError;
use tubemail::routing::RoutingError;
use tubemail::{
    AckError, Acker, BindError, Broker, Confirm, DeclareError, Delivery, Message, Outcome, Payload,
    PublishError, Publisher, QueueSpec, QueueStats, ShutdownReport, StartError, Stats, SubscribeError,
    SubscribeOptions, Subscription, TopicStats, Topology, TopologyError, TryPublishError, UnsubscribeReport,
};

fn require_send<T: Send>(_: &T) {}
fn require_sync<T: Sync>(_: &T) {}
fn require_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}

/// Asserts that a value of the type is `Send`, `Sync`, or an error that may cross threads
/// (`Error + Send + Sync + 'static`, as `Box<dyn Error + Send + Sync>` needs).
macro_rules! assert_value {
    ($type:ty: Send & Sync) => {
        const _: fn() = || {
            let value: $type = todo!();
            require_send(&value);
            require_sync(&value);
        };
    };
    ($type:ty: Send) => {
        const _: fn() = || {
            let value: $type = todo!();
            require_send(&value);
        };
    };
    ($type:ty: Error) => {
        const _: fn() = || {
            let value: $type = todo!();
            require_error(&value);
        };
    };
}

/// Asserts that the future an expression returns is `Send`.
macro_rules! assert_future_send {
    ($name:ident, $future:expr) => {
        const _: fn() = || {
            let $name: &'static Broker = todo!();
            require_send(&$future);
        };
    };
}

// The handles.
assert_value!(Broker: Send & Sync);
assert_value!(Publisher: Send & Sync);
assert_value!(Subscription: Send & Sync);
assert_value!(Acker: Send & Sync);

// What operations return.
assert_value!(Confirm: Send & Sync);
assert_value!(Stats: Send & Sync);
assert_value!(QueueStats: Send & Sync);
assert_value!(TopicStats: Send & Sync);
assert_value!(ShutdownReport: Send & Sync);
assert_value!(UnsubscribeReport: Send & Sync);
assert_value!(Outcome: Send & Sync);
assert_value!(Message: Send & Sync);
assert_value!(Payload: Send & Sync);
assert_value!(Topology: Send & Sync);
assert_value!(QueueSpec: Send & Sync);
assert_value!(SubscribeOptions: Send & Sync);

// The errors: each `Error + Send + Sync + 'static`.
assert_value!(PublishError: Error);
assert_value!(TryPublishError<u32>: Error);
assert_value!(TryPublishError<String>: Error);
assert_value!(SubscribeError: Error);
assert_value!(BindError: Error);
assert_value!(DeclareError: Error);
assert_value!(StartError: Error);
assert_value!(AckError: Error);
assert_value!(SettleError: Error);
assert_value!(TopologyError: Error);
assert_value!(RoutingError: Error);
assert_value!(PayloadError: Error);

/// A delivery may be handed to another thread (say, a worker pool), or shared by reference, when its
/// value is `Send + Sync`, as every subscriber's value is (`subscribe` asks for `T: Send + Sync`).
fn delivery_is_send_and_sync<T: Send + Sync>(delivery: &Delivery<T>) {
    require_send(delivery);
    require_sync(delivery);
}

/// A concrete instance of the generic check, so that it is not only declared.
const _: fn() = || {
    let delivery: Delivery<String> = todo!();
    delivery_is_send_and_sync(&delivery);
};

// The futures of the async methods.
assert_future_send!(broker, broker.publish("events", "orders.1", 1_u32));
assert_future_send!(broker, broker.publish_bytes("events", "orders.1", vec![1_u8]));
assert_future_send!(broker, broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Ack }));
assert_future_send!(
    broker,
    broker.subscribe_with("q", SubscribeOptions::default(), |_: Delivery<u32>| async { Outcome::Ack })
);
assert_future_send!(
    broker,
    broker.subscribe_sync_with("q", SubscribeOptions::default(), |_: Delivery<u32>| Outcome::Ack)
);
assert_future_send!(broker, broker.bind("events", "q", "orders.#"));
assert_future_send!(broker, broker.unbind("events", "q", "orders.#"));
assert_future_send!(broker, broker.delete_queue("q"));
assert_future_send!(broker, broker.stats());
assert_future_send!(broker, broker.shutdown(Duration::from_secs(1)));

const _: fn() = || {
    let publisher: &'static Publisher = todo!();
    require_send(&publisher.publish("orders.1", 1_u32));
    let acker: &'static Acker = todo!();
    require_send(&acker.ack(false));
    require_send(&acker.nack(false, true));
    require_send(&acker.reject());
    let subscription: Subscription = todo!();
    require_send(&subscription.unsubscribe(Duration::from_secs(1)));
};
