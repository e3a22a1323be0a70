//! What a connection's reader does with a client message: the rate limit, route resolution
//! (a local handler or a module on other nodes), and running the request (`run_job`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rookery_protocol::{Message, MessageType};
use tokio::time::Instant;

use super::close::REASON_RATE_LIMIT;
use super::wire::{End, Incoming};
use crate::router::RouteEntry;
use crate::{telemetry, App, Code, Error, Session};

/// Where a queued client message goes.
pub(super) enum Dest {
    /// A handler of this node.
    Local(Arc<RouteEntry>),
    /// A module on other nodes: forwarded with the session; true if the route runs there
    /// concurrently (`Dispatch::Concurrent`), so that the session's next request need not wait.
    Remote(rookery_protocol::RouteName, bool),
}

/// One queued client message, resolved to its route.
pub(super) struct Job {
    pub(super) dest: Dest,
    kind: MessageType,
    id: u64,
    /// What the protocol needs, beside `id`, to address the answer.
    reply_to: Option<Box<str>>,
    payload: Bytes,
    /// When its packet was read (the start of the request's measured duration).
    received: Instant,
}

/// A connection's rate limit and how often the client broke it.
pub(super) struct RateCheck {
    limiter: DefaultDirectRateLimiter,
    violations: u32,
    max_violations: u32,
}

impl RateCheck {
    /// The gateway's configured limit (`gateway.rate_limit`), boxed (a connection without one,
    /// `per_second = 0`, keeps 8 bytes for it); `None` without one.
    pub(super) fn new(app: &App) -> Option<Box<Self>> {
        let rl = &app.config().gateway.rate_limit;
        let per_second = NonZeroU32::new(rl.per_second)?;
        let burst = NonZeroU32::new(rl.burst.max(rl.per_second)).unwrap_or(per_second);
        Some(Box::new(Self {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            violations: 0,
            max_violations: rl.max_violations,
        }))
    }
}

/// Turns a client's request or notify into a job: `Ok(None)` if it was refused with an error
/// response (rate limit, compressed payload, unknown route), `Err` if the connection must end.
pub(super) fn resolve(
    app: &App,
    session: &Session,
    incoming: Incoming,
    received: Instant,
    rate: Option<&mut RateCheck>,
) -> Result<Option<Job>, End> {
    let Incoming {
        msg,
        reply_to,
        refused,
    } = incoming;
    if !matches!(msg.kind, MessageType::Request | MessageType::Notify) {
        return Err(End::Violation(format!(
            "clients may not send {:?}",
            msg.kind
        )));
    }
    if let Some(rate) = rate {
        if rate.limiter.check().is_err() {
            count_rate_limited(app, &msg);
            rate.violations += 1;
            if rate.violations > rate.max_violations {
                return Err(End::RateLimited);
            }
            let err = Error::new(Code::RateLimited, REASON_RATE_LIMIT);
            reply_error(session, &msg, reply_to.as_deref(), err);
            return Ok(None);
        }
    }
    if let Some(err) = refused {
        reply_error(session, &msg, reply_to.as_deref(), err);
        return Ok(None);
    }
    let mut msg = msg;
    if msg.compressed {
        // Inflated within the packet size limit: a zip bomb is refused, never held.
        let limit = app.config().gateway.max_packet_size;
        match rookery_protocol::compression::inflate(&msg.payload, limit) {
            Ok(payload) => msg.payload = payload,
            Err(e) => {
                reply_error(
                    session,
                    &msg,
                    reply_to.as_deref(),
                    Error::bad_request(e.to_string()),
                );
                return Ok(None);
            }
        }
    }
    let route = msg
        .route
        .as_ref()
        .expect("requests and notifies carry a route");
    let dest = match app.router().resolve_client(route) {
        Some(entry) => Dest::Local(entry.clone()),
        None => match remote_route(app, session, route) {
            Some(name) => {
                let concurrent = app.inner().cluster.is_concurrent(name.as_str());
                Dest::Remote(name, concurrent)
            }
            None => {
                let name = match route {
                    rookery_protocol::Route::Name(n) => n.to_string(),
                    rookery_protocol::Route::Code(c) => format!("#{c}"),
                };
                reply_error(session, &msg, reply_to.as_deref(), Error::not_found(&name));
                return Ok(None);
            }
        },
    };
    Ok(Some(Job {
        dest,
        kind: msg.kind,
        id: msg.id,
        reply_to,
        payload: msg.payload,
        received,
    }))
}

/// Counts a message refused by the rate limit in `rookery_requests_total{outcome="rate_limited"}`
/// under its route if it is one of this node's, else under `*`: a route a client names is not
/// a bounded label. Through handles registered at start, so a flood registers nothing.
fn count_rate_limited(app: &App, msg: &Message) {
    match msg
        .route
        .as_ref()
        .and_then(|r| app.router().resolve_client(r))
    {
        Some(entry) => entry.stats.record_rate_limited(),
        None => app.inner().rate_limited_elsewhere.increment(1),
    }
}

/// A client route served by another node: its module is not local, some node runs it, and it
/// is not a system route.
/// A code is read in the dictionary the client was given (which holds the cluster's routes).
fn remote_route(
    app: &App,
    session: &Session,
    route: &rookery_protocol::Route,
) -> Option<rookery_protocol::RouteName> {
    let name = match route {
        rookery_protocol::Route::Name(name) => name.clone(),
        rookery_protocol::Route::Code(code) => {
            rookery_protocol::RouteName::try_from(session.dict().name(*code)?).ok()?
        }
    };
    let module = crate::rpc::route_module(name.as_str())?;
    if module == "sys" || app.modules().iter().any(|m| m.name() == module) {
        return None;
    }
    (!app.cluster().running(module).is_empty()).then_some(name)
}

fn reply_error(session: &Session, msg: &Message, reply_to: Option<&str>, err: Error) {
    if msg.kind == MessageType::Request {
        if let Ok(b) = session.encode_response(msg.id, reply_to, Err(err)) {
            let _ = session.send_packet(b);
        }
    } else {
        tracing::debug!(session = session.id(), error = %err, "notify refused");
    }
}

pub(super) async fn run_job(app: &App, session: &Session, job: Job, timeout: Duration) {
    // Every client request starts a trace here.
    let trace = telemetry::new_trace_id();
    let (route, result): (&str, _) = match &job.dest {
        Dest::Local(entry) => (
            &entry.route,
            app.invoke(
                entry,
                session.clone(),
                job.payload,
                timeout,
                trace,
                Some(job.received.into_std()),
            )
            .await,
        ),
        // Boxed: a forward's state (~600 bytes) would otherwise be part of every local
        // request's box. The route is validated as UTF-8 once here, not for each use.
        Dest::Remote(route, _) => {
            let name = route.as_str();
            (
                name,
                Box::pin(telemetry::with_trace_id(
                    trace,
                    app.rpc()
                        .forward(name, route.bytes().clone(), job.payload, session),
                ))
                .await,
            )
        }
    };
    match job.kind {
        MessageType::Request => {
            match session.encode_response(job.id, job.reply_to.as_deref(), result) {
                Ok(b) => {
                    let _ = session.send_packet(b);
                }
                Err(e) => tracing::error!(%route, error = %e, "response too large"),
            }
        }
        _ => {
            if let Err(e) = result {
                tracing::debug!(%route, error = %e, "notify handler failed");
            }
        }
    }
}
