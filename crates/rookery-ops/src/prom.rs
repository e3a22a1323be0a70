//! The Prometheus recorder, and reading figures back out of its text for `/api/stats`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rookery::telemetry as t;

/// Bucket upper bounds (seconds) of the latency histograms
/// (`rookery_handler_duration_seconds`, `rookery_rpc_duration_seconds`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle) and
/// returns the handle that renders `/metrics`.
///
/// Call it before building a server: the framework registers its per-route metric handles when
/// the routes are built, and handles registered before a recorder exists record nothing.
/// Latency metrics are histograms with [`LATENCY_BUCKETS`]. A background thread runs the
/// recorder's upkeep every 5 s so histogram samples are folded in even when nobody scrapes.
/// If another recorder was installed first, the returned handle renders nothing (logged).
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = [t::HANDLER_DURATION_SECONDS, t::RPC_DURATION_SECONDS]
                .into_iter()
                .fold(PrometheusBuilder::new(), |b, name| {
                    b.set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)
                        .expect("bucket list is not empty")
                });
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("rookery-metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(Duration::from_secs(5));
                            upkeep.run_upkeep();
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "metrics upkeep thread not started");
                    }
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// HELP lines for the framework's metrics.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(t::CONNECTIONS_TOTAL, "Connections accepted, by acceptor.");
    describe_gauge!(t::SESSIONS, "Sessions open now, by acceptor.");
    describe_counter!(
        t::HANDSHAKES_FAILED_TOTAL,
        "Handshakes that failed, by reason."
    );
    describe_counter!(
        t::REQUESTS_TOTAL,
        "Requests handled, by route and outcome (ok or the error code)."
    );
    describe_histogram!(
        t::HANDLER_DURATION_SECONDS,
        Unit::Seconds,
        "Handler latency, by route."
    );
    describe_counter!(t::PUSHES_SENT_TOTAL, "Pushes queued to clients.");
    describe_counter!(
        t::PUSHES_DROPPED_TOTAL,
        "Pushes that could not be queued (session closed or too slow)."
    );
    describe_counter!(
        t::SLOW_CLIENT_DISCONNECTS_TOTAL,
        "Clients disconnected because their outbound queue overflowed."
    );
    describe_counter!(
        t::PROTOCOL_ERRORS_TOTAL,
        "Protocol violations that closed a connection."
    );
    describe_counter!(
        t::DISCONNECTS_TOTAL,
        "Connections the server closed on its own initiative, by reason."
    );
    describe_counter!(t::RPC_CALLS_TOTAL, "RPC calls made, by target and outcome.");
    describe_histogram!(
        t::RPC_DURATION_SECONDS,
        Unit::Seconds,
        "RPC latency, by target."
    );
    describe_counter!(t::DISCOVERY_EVENTS_TOTAL, "Discovery events, by kind.");
    describe_gauge!(t::NODES, "Nodes known, by type.");
    describe_counter!(
        crate::HTTP_REQUESTS_TOTAL,
        "HTTP gateway requests, by status."
    );
}

/// Cumulative bucket counts of one histogram series: `(upper bound, count)` sorted by bound,
/// the last one `+Inf`.
pub(crate) type Buckets = Vec<(f64, f64)>;

/// Reads the `_bucket` series of histogram `metric` from Prometheus text, keyed by the value of
/// `label` (e.g. the route).
pub(crate) fn parse_buckets(text: &str, metric: &str, label: &str) -> HashMap<String, Buckets> {
    let prefix = format!("{metric}_bucket{{");
    let mut out: HashMap<String, Buckets> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = split_labels(rest) else {
            continue;
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        let mut key = None;
        let mut le = None;
        for (k, v) in labels {
            if k == label {
                key = Some(v);
            } else if k == "le" {
                le = match v.as_str() {
                    "+Inf" => Some(f64::INFINITY),
                    s => s.parse::<f64>().ok(),
                };
            }
        }
        if let (Some(key), Some(le)) = (key, le) {
            out.entry(key).or_default().push((le, count));
        }
    }
    for b in out.values_mut() {
        b.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The sum of every series of a counter or gauge (0 when absent).
pub(crate) fn sum_series(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let value = if let Some(labels) = rest.strip_prefix('{') {
                split_labels(labels)?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None; // another metric sharing the prefix
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Splits `a="x",b="y"} 12` into its labels and the text after the closing brace.
fn split_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        match chars.peek() {
            Some((i, '}')) => return Some((labels, &s[i + 1..])),
            Some((_, ',')) => {
                chars.next();
                continue;
            }
            None => return None,
            _ => {}
        }
        let mut name = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut value = String::new();
        let mut closed = false;
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return None,
                },
                '"' => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return None;
        }
        labels.push((name.trim().to_string(), value));
    }
}

/// Bucket-wise `now - base` (a series missing from `base` counts from zero).
pub(crate) fn delta(now: &Buckets, base: Option<&Buckets>) -> Buckets {
    now.iter()
        .map(|&(le, n)| {
            let b = base
                .and_then(|b| b.iter().find(|(l, _)| *l == le))
                .map_or(0.0, |(_, c)| *c);
            (le, (n - b).max(0.0))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside the bucket that holds
/// it (the method of Prometheus' `histogram_quantile`). A quantile in the `+Inf` bucket is
/// reported as the largest finite bound. None when the buckets are empty.
pub(crate) fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE rookery_handler_duration_seconds histogram
rookery_handler_duration_seconds_bucket{route="a.b.c",le="0.001"} 90
rookery_handler_duration_seconds_bucket{route="a.b.c",le="0.01"} 100
rookery_handler_duration_seconds_bucket{route="a.b.c",le="+Inf"} 100
rookery_handler_duration_seconds_sum{route="a.b.c"} 0.2
rookery_handler_duration_seconds_count{route="a.b.c"} 100
rookery_handler_duration_seconds_bucket{route="we\"ird",le="0.001"} 0
rookery_handler_duration_seconds_bucket{route="we\"ird",le="+Inf"} 3
rookery_pushes_sent_total 7
rookery_pushes_sent_total_other 100
rookery_sessions{acceptor="tcp"} 2
rookery_sessions{acceptor="ws"} 3
"#;

    #[test]
    fn parses_buckets_and_quantiles() {
        let b = parse_buckets(TEXT, "rookery_handler_duration_seconds", "route");
        let abc = &b["a.b.c"];
        assert_eq!(abc.len(), 3);
        // rank 99 of 100 lies in the (0.001, 0.01] bucket holding 10: 0.001 + 0.009 * 9/10.
        let p99 = quantile(0.99, abc).unwrap();
        assert!((p99 - 0.0091).abs() < 1e-9, "{p99}");
        assert!((quantile(0.5, abc).unwrap() - 0.001 * 50.0 / 90.0).abs() < 1e-9);
        // Everything beyond the last finite bound: reported as that bound.
        assert_eq!(quantile(0.99, &b["we\"ird"]), Some(0.001));
        assert_eq!(quantile(0.99, &vec![(f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn sums_series_and_windows() {
        assert_eq!(sum_series(TEXT, "rookery_pushes_sent_total"), 7.0);
        assert_eq!(sum_series(TEXT, "rookery_sessions"), 5.0);
        assert_eq!(sum_series(TEXT, "rookery_nope"), 0.0);
        let now = vec![(0.001, 10.0), (f64::INFINITY, 12.0)];
        let base = vec![(0.001, 4.0), (f64::INFINITY, 4.0)];
        assert_eq!(
            delta(&now, Some(&base)),
            vec![(0.001, 6.0), (f64::INFINITY, 8.0)]
        );
        assert_eq!(delta(&now, None), now);
    }
}
