//! A backfill over a stream is a few lines: an iteration job whose enumerator reads a partition of
//! the broker's stream, checkpointing its offset.

use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tubemail::jobs::{enumerators, Enumerator, IterationJob, Job, JobContext, JobError, Jobs};
use tubemail::{Broker, StreamSpec, Topology};

static PARTITION: OnceLock<Arc<tubemail_log::Partition>> = OnceLock::new();
static SEEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Serialize, Deserialize)]
struct Backfill;

impl Job for Backfill {
    const NAME: &'static str = "backfill";
}

impl IterationJob for Backfill {
    type Item = tubemail_log::Record;
    type Cursor = u64;

    fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<Self::Item, u64>, JobError> {
        let partition = PARTITION.get().expect("set before the job runs").clone();
        Ok(enumerators::partition(partition, 0, cursor))
    }

    async fn each_iteration(&self, record: tubemail_log::Record, _ctx: &JobContext) -> Result<(), JobError> {
        let order: u64 = rmp_serde::from_slice(record.value.as_deref().unwrap_or_default())?;
        SEEN.lock().unwrap().push(order);
        Ok(())
    }
}

#[test]
fn an_iteration_job_backfills_every_record_of_a_stream_partition() {
    actix::System::new().block_on(async {
        let topology = Topology::new().stream("orders", StreamSpec::default());
        let broker = Broker::start(topology).unwrap();
        for order in 0..300u64 {
            broker.append("orders", &format!("order-{order}"), &order).await.unwrap();
        }
        PARTITION.set(broker.stream_partition("orders", 0).unwrap()).ok();
        let jobs = Jobs::builder().iteration::<Backfill>().start().unwrap();
        jobs.enqueue(Backfill).await.unwrap();
        jobs.idle().await;
        assert_eq!(*SEEN.lock().unwrap(), (0..300).collect::<Vec<_>>());
        assert!(broker.stream_partition("nope", 0).is_err());
        jobs.shutdown().await;
        broker.shutdown(std::time::Duration::from_secs(1)).await;
    });
}
