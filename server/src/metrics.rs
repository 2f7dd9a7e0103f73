//! `/metrics`: the server's Prometheus series, and the tower layer that
//! counts gRPC calls.
//!
//! The hot path only touches lock-free counters and histograms
//! (`prometheus-client`); everything that has to be looked up (the latest
//! sequence, open streams, pool use, pending requests, each durable
//! consumer's lag and dead letters) is read when a scrape asks: one cheap
//! query, and the consumers' reads of `app::list_consumers`, a few per
//! consumer. This module must never add a database round trip to a gRPC
//! call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tonic::codegen::http;

use crate::store::Store;
use crate::transport::{Hook, HookLayer};
use crate::watch::Watchers;

/// A series' name (after the `modelreg_` prefix) and its help text.
type Series = (&'static str, &'static str);

/// `modelreg_watch_streams_open`.
const WATCH_STREAMS_OPEN: Series = (
    "watch_streams_open",
    "WatchTransitions streams open in this process",
);

/// `modelreg_events_appended`.
const EVENTS_APPENDED: Series = (
    "events_appended",
    "Events appended to the event log since this server started (on PostgreSQL, by \
     every replica)",
);

/// `modelreg_latest_sequence`.
const LATEST_SEQUENCE: Series = ("latest_sequence", "The highest committed event sequence");

/// `modelreg_slowest_watcher_lag_events`.
const SLOWEST_WATCHER_LAG_EVENTS: Series = (
    "slowest_watcher_lag_events",
    "Events between the latest sequence and the cursor of this server's slowest \
     WatchTransitions subscriber (0 without subscribers)",
);

/// `modelreg_db_pool_connections`.
const DB_POOL_CONNECTIONS: Series = (
    "db_pool_connections",
    "Connections of the database pool that serves reads (SQLite's readers, the one \
     pool on PostgreSQL), by state",
);

/// `modelreg_transition_requests_pending`.
const TRANSITION_REQUESTS_PENDING: Series = (
    "transition_requests_pending",
    "Transition requests waiting for approval (status PENDING)",
);

/// `modelreg_consumer_lag_events`.
const CONSUMER_LAG_EVENTS: Series = (
    "consumer_lag_events",
    "Matching events a durable consumer has not yet acknowledged (nor skipped as dead \
     letters), over every model, by consumer",
);

/// `modelreg_consumer_dead_letters`.
const CONSUMER_DEAD_LETTERS: Series = (
    "consumer_dead_letters",
    "Dead letters a durable consumer has parked (not being retried), by consumer",
);

/// Consumers read per page at a scrape.
const CONSUMER_PAGE: usize = 500;

/// The labels of one gRPC call's count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The RPC's name (the path's last segment), `unknown` for unimplemented paths.
    method: String,
    /// The grpc-status code name, e.g. `OK`, `NOT_FOUND`.
    code: &'static str,
}

/// The labels of one gRPC call's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    /// The RPC's name.
    method: String,
}

/// The labels of the pool gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    /// `idle` or `in_use`.
    state: &'static str,
}

/// The labels of the consumer gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    /// The consumer's name.
    consumer: String,
}

/// Every series of one server, and what the scrape-time ones are read from.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
    /// Counted and timed by [`GrpcMetricsLayer`].
    grpc: GrpcMetrics,
    /// WatchTransitions subscriber tasks alive.
    watch_streams_open: Gauge,
    /// Events appended to the log since start.
    events_appended: Counter,
    /// The latest sequence the last scrape saw, so the counter moves by the difference.
    sequence_seen: AtomicU64,
    /// The highest committed sequence.
    latest_sequence: Gauge,
    /// Latest sequence minus the slowest subscriber's cursor.
    slowest_watcher_lag: Gauge,
    /// Connections of the read pool, by state.
    pool: Family<PoolLabels, Gauge>,
    /// PENDING transition requests.
    pending_requests: Gauge,
    /// Each consumer's lag, refilled at every scrape so a deleted consumer's
    /// series goes away.
    consumer_lag: Family<ConsumerLabels, Gauge>,
    /// Each consumer's parked dead letters, refilled like `consumer_lag`.
    consumer_dead_letters: Family<ConsumerLabels, Gauge>,
    /// Held from refilling the consumer families to encoding, so a scrape
    /// never encodes another's half-refilled families.
    encoding: std::sync::Mutex<()>,
    /// The database the scrape-time series are read from.
    store: Store,
    /// This server's subscribers' cursors.
    watchers: Arc<Watchers>,
}

/// The gRPC call series, shared by the layer's clones.
#[derive(Clone)]
pub struct GrpcMetrics {
    /// Every method path this server serves (`/package.Service/Method`) with
    /// its label: only these get series of their own, so no caller can
    /// create series at will.
    known: Arc<HashMap<String, String>>,
    /// Calls by method and code.
    requests: Family<CallLabels, Counter>,
    /// Seconds to the response headers, by method.
    durations: Family<MethodLabels, Histogram>,
}

impl Metrics {
    /// The series of a server on `store` whose subscribers are `watchers`.
    pub fn new(store: Store, watchers: Arc<Watchers>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("modelreg");
        let grpc = GrpcMetrics {
            known: Arc::new(known_methods()),
            requests: Family::default(),
            // 1 ms … ~33 s.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code. The code is the grpc-status of the response \
             headers (calls refused before any message, trailers-only); a call whose headers \
             carry no status (a unary call answered normally, or a stream that opened) counts \
             as OK, even if its trailers later report an error",
            grpc.requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Seconds from a gRPC call's arrival to its response headers, by method (for a \
             server stream, until the stream opens)",
            grpc.durations.clone(),
        );
        let watch_streams_open: Gauge = registered(&mut registry, WATCH_STREAMS_OPEN);
        let events_appended: Counter = registered(&mut registry, EVENTS_APPENDED);
        let latest_sequence: Gauge = registered(&mut registry, LATEST_SEQUENCE);
        let slowest_watcher_lag: Gauge = registered(&mut registry, SLOWEST_WATCHER_LAG_EVENTS);
        let pool: Family<PoolLabels, Gauge> = registered(&mut registry, DB_POOL_CONNECTIONS);
        registry.register(
            "write_batch_size",
            "Writes committed per database transaction: SQLite commits queued writes in \
             groups; PostgreSQL commits each write alone (always 1)",
            store.write_batch_sizes(),
        );
        let pending_requests: Gauge = registered(&mut registry, TRANSITION_REQUESTS_PENDING);
        let consumer_lag: Family<ConsumerLabels, Gauge> =
            registered(&mut registry, CONSUMER_LAG_EVENTS);
        let consumer_dead_letters: Family<ConsumerLabels, Gauge> =
            registered(&mut registry, CONSUMER_DEAD_LETTERS);
        Arc::new(Metrics {
            registry,
            grpc,
            watch_streams_open,
            events_appended,
            sequence_seen: AtomicU64::new(store.latest_sequence()),
            latest_sequence,
            slowest_watcher_lag,
            pool,
            pending_requests,
            consumer_lag,
            consumer_dead_letters,
            encoding: std::sync::Mutex::new(()),
            store,
            watchers,
        })
    }

    /// The tower layer that counts and times gRPC calls into these series.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        HookLayer(self.grpc.clone())
    }

    /// Reads the scrape-time series and encodes everything in the
    /// Prometheus (OpenMetrics) text format.
    pub async fn render(&self) -> String {
        let latest = self.store.latest_sequence();
        let before = self.sequence_seen.fetch_max(latest, Ordering::Relaxed);
        self.events_appended.inc_by(latest.saturating_sub(before));
        self.latest_sequence.set(gauge_value(latest));
        self.watch_streams_open
            .set(gauge_value(crate::watch::open_watch_streams() as u64));
        let lag = self
            .watchers
            .slowest_cursor()
            .map_or(0, |cursor| latest.saturating_sub(cursor));
        self.slowest_watcher_lag.set(gauge_value(lag));
        let pool = self.store.pool_connections();
        self.pool
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(pool.idle));
        self.pool
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(pool.open - pool.idle));
        match self.store.count_pending_requests().await {
            Ok(n) => {
                self.pending_requests.set(gauge_value(n));
            }
            // The last value stays; the scrape still answers.
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count pending requests"),
        }
        // Read whole before anything is replaced: a failed read keeps the
        // last values, as for pending requests.
        let consumers = match self.consumer_gauges().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the consumers");
                None
            }
        };
        let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(consumers) = consumers {
            self.consumer_lag.clear();
            self.consumer_dead_letters.clear();
            for (consumer, lag, parked) in consumers {
                let labels = ConsumerLabels { consumer };
                self.consumer_lag
                    .get_or_create(&labels)
                    .set(gauge_value(lag));
                self.consumer_dead_letters
                    .get_or_create(&labels)
                    .set(gauge_value(parked));
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics: cannot encode");
        }
        out
    }
}

impl Metrics {
    /// Every consumer's name, lag and parked dead letters, page after page.
    async fn consumer_gauges(&self) -> Result<Vec<(String, u64, u64)>, crate::error::Error> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (views, more) =
                crate::app::list_consumers(&self.store, &after, CONSUMER_PAGE).await?;
            for v in views {
                after.clone_from(&v.state.record.name);
                out.push((v.state.record.name, v.lag, v.state.parked));
            }
            if !more {
                return Ok(out);
            }
        }
    }
}

/// A new series registered under its name and help, handed back to be updated.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, (name, help): Series) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The tower layer on the gRPC server that feeds the call series.
pub type GrpcMetricsLayer = HookLayer<GrpcMetrics>;

impl Hook for GrpcMetrics {
    /// The method's label, when the call started, and the series.
    type Before = (String, Instant, GrpcMetrics);

    fn before<B>(&self, req: &http::Request<B>) -> Self::Before {
        // Resolved before the call: a path no service serves is `unknown`
        // whatever the answer (UNIMPLEMENTED, or UNAUTHENTICATED when the
        // auth layer refuses it first).
        let method = self
            .known
            .get(req.uri().path())
            .map_or("unknown", String::as_str)
            .to_owned();
        (method, Instant::now(), self.clone())
    }

    fn after<ResBody>(
        (method, started, metrics): Self::Before,
        resp: &mut http::Response<ResBody>,
    ) {
        let code = match resp.headers().get("grpc-status") {
            Some(status) => code_name(status.as_bytes()),
            None if resp.status() == http::StatusCode::OK => "OK",
            None => "UNKNOWN",
        };
        metrics
            .durations
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&CallLabels { method, code })
            .inc();
    }
}

/// The label of every method of the services this server serves: the
/// method's name (`RegisterVersion`, `Check`), keyed by its path, read from
/// the services' own descriptors.
fn known_methods() -> HashMap<String, String> {
    use prost::Message as _;
    let sets = [
        modelreg_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut known = HashMap::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            tracing::error!("metrics: a service descriptor set does not decode");
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    known.insert(
                        format!("/{package}.{}/{}", service.name(), method.name()),
                        method.name().to_owned(),
                    );
                }
            }
        }
    }
    known
}

/// The name of a grpc-status value, as Prometheus users know them.
fn code_name(status: &[u8]) -> &'static str {
    match status {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known_and_nothing_else() {
        let known = known_methods();
        assert_eq!(
            known
                .get("/modelreg.v1.ModelRegistryService/RegisterVersion")
                .map(String::as_str),
            Some("RegisterVersion")
        );
        assert_eq!(
            known
                .get("/grpc.health.v1.Health/Check")
                .map(String::as_str),
            Some("Check")
        );
        assert!(known.contains_key("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!known.contains_key("/modelreg.v1.ModelRegistryService/Junk1"));
        assert!(!known.contains_key("/other.Service/RegisterVersion"));
    }

    #[test]
    fn status_codes_have_their_names() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"5"), "NOT_FOUND");
        assert_eq!(code_name(b"16"), "UNAUTHENTICATED");
        assert_eq!(code_name(b"99"), "UNKNOWN");
    }
}
