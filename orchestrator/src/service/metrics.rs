//! Prometheus metrics of the service (`GET /metrics`, OpenMetrics text),
//! with `prometheus-client`. Counters and the create-latency histogram live
//! here; sandboxes by state and the pool counters are read at each scrape.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::pools::Shape;
use crate::vm::pool::PoolStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShapeLabels {
    image: String,
    vcpus: u32,
    memory_mib: u32,
}

pub struct Metrics {
    created: Counter,
    ended: Family<ReasonLabel, Counter>,
    execs: Counter,
    create_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            created: Counter::default(),
            ended: Family::default(),
            execs: Counter::default(),
            // 1 ms .. ~65 s
            create_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }

    pub fn created(&self, took: Duration) {
        self.created.inc();
        self.create_seconds.observe(took.as_secs_f64());
    }

    pub fn ended(&self, reason: &str) {
        self.ended
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn exec(&self) {
        self.execs.inc();
    }

    /// The OpenMetrics text of all metrics, with `running` live sandboxes
    /// and the pools' counters as they are now.
    pub fn render(&self, running: usize, pools: &[(Shape, PoolStats)]) -> String {
        let mut r = Registry::with_prefix("ironclaw");
        r.register(
            "sandboxes_created",
            "Sandboxes created",
            self.created.clone(),
        );
        r.register(
            "sandboxes_ended",
            "Sandboxes ended, by reason (destroyed, expired)",
            self.ended.clone(),
        );
        r.register("execs", "Commands started in sandboxes", self.execs.clone());
        r.register(
            "sandbox_create_seconds",
            "Time from a create request to a ready sandbox",
            self.create_seconds.clone(),
        );
        let by_state = Family::<StateLabel, Gauge>::default();
        by_state
            .get_or_create(&StateLabel {
                state: "running".into(),
            })
            .set(running as i64);
        r.register("sandboxes", "Live sandboxes by state", by_state);
        let ready = Family::<ShapeLabels, Gauge>::default();
        let hits = Family::<ShapeLabels, Counter>::default();
        let misses = Family::<ShapeLabels, Counter>::default();
        for (shape, stats) in pools {
            let l = ShapeLabels {
                image: shape.image.clone(),
                vcpus: shape.vcpus,
                memory_mib: shape.memory_mib,
            };
            ready.get_or_create(&l).set(stats.ready as i64);
            hits.get_or_create(&l).inc_by(stats.hits);
            misses.get_or_create(&l).inc_by(stats.misses);
        }
        r.register("pool_ready", "Clones ready in the pool of a shape", ready);
        r.register("pool_hits", "Acquires served by a ready clone", hits);
        r.register(
            "pool_misses",
            "Acquires that had to restore a clone",
            misses,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
        out
    }
}
