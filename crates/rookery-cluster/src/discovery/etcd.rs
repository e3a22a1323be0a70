//! etcd discovery back end.
//!
//! Each node is one key, `PREFIX + node id`, whose value is the node's [`NodeInfo`] as JSON and
//! which is attached to a lease with a TTL. The lease is kept alive by one background task; when
//! the node stops keeping it alive (process killed, network cut) etcd deletes the key after the
//! TTL and every watcher sees the node leave.
//!
//! Failure handling:
//!
//! * Every etcd call has a deadline ([`OP_TIMEOUT`], or less), so nothing waits forever on an
//!   unreachable etcd.
//! * The keepalive task retries with a bounded backoff (200 ms doubling to 2 s, with jitter) while
//!   etcd is unreachable. If etcd says the lease is gone (it expired while we could not reach
//!   etcd), the task grants a new lease and puts the node again, with the latest info given to
//!   [`Discovery::register`] or [`Discovery::update`].
//! * A watcher starts from a snapshot of the prefix and watches from the snapshot's revision. On
//!   any watch failure (error, stream end, compaction, etcd restart, silent stream) it reconnects
//!   with backoff, takes a new snapshot, reports the difference with what it reported before
//!   (`Added`, `Updated`, `Removed`) and watches again from the new revision.
//! * Values under the prefix that are not a node's JSON are skipped with a warning.
//! * Background tasks stop when the [`EtcdDiscovery`] is closed or dropped; a watcher's task also
//!   stops when its receiver is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use rookery_etcd::{
    Client, ConnectOptions, EventType, KeepAliveStream, LeaseKeeper, RangeResponse, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Discovery, DiscoveryError, DiscoveryEvent, EVENT_QUEUE};
use crate::NodeInfo;

/// Deadline of every single etcd call (grant, put, get, revoke, opening a stream).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest lease TTL accepted, in seconds.
pub const MIN_TTL: u64 = 2;
/// First retry delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Largest retry delay (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A watch stream silent for this long is probed with a progress request; if that gets no answer
/// within [`OP_TIMEOUT`] the stream is considered dead and the watcher resyncs.
const WATCH_PROBE_AFTER: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive pings while a stream is open (etcd refuses pings more often than every 5 s).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for an HTTP/2 ping answer.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the etcd back end.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix: a node is stored under `prefix + id`, its value the node's JSON.
    pub prefix: String,
    /// Lease TTL in seconds (at least [`MIN_TTL`]): how long a node whose process died stays
    /// listed.
    pub ttl: u64,
    /// etcd user (authentication is used when set).
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Seconds [`EtcdDiscovery::connect`] may take.
    pub connect_timeout: f64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/rookery/nodes/".to_string(),
            ttl: 10,
            user: None,
            password: None,
            connect_timeout: 5.0,
        }
    }
}

// By hand so the password never ends up in logs.
impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl EtcdConfig {
    /// Checks the settings; returns the connect timeout.
    fn validate(&self) -> Result<Duration, DiscoveryError> {
        let bad = |m: String| Err(DiscoveryError::config(m));
        if self.endpoints.is_empty() {
            return bad("etcd: no endpoints".into());
        }
        if self.prefix.is_empty() {
            return bad("etcd: empty key prefix".into());
        }
        if self.ttl < MIN_TTL || i64::try_from(self.ttl).is_err() {
            return bad(format!(
                "etcd: ttl {} out of range (at least {MIN_TTL} seconds)",
                self.ttl
            ));
        }
        if self.user.is_none() && self.password.is_some() {
            return bad("etcd: password given without a user".into());
        }
        match Duration::try_from_secs_f64(self.connect_timeout) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => bad(format!(
                "etcd: connect_timeout {} must be a positive number of seconds",
                self.connect_timeout
            )),
        }
    }
}

/// Discovery through etcd: leases with keepalive for registration, prefix watches for membership.
///
/// Dropping it (or [`EtcdDiscovery::close`]) stops its background tasks without revoking the
/// lease, so a registered node disappears from the cluster after the TTL, as if its process had
/// died. Call [`Discovery::deregister`] for a prompt, clean leave.
pub struct EtcdDiscovery {
    client: Client,
    prefix: String,
    ttl: i64,
    /// Cancelled on close/drop; every background task watches it.
    cancel: CancellationToken,
    registration: tokio::sync::Mutex<Slot>,
}

impl fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("closed", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// This node's registration state.
#[derive(Default)]
struct Slot {
    active: Option<Registration>,
    /// A lease whose revoke failed in `deregister`; the next `deregister` tries again.
    unrevoked: Option<i64>,
}

/// A running registration: the keepalive task and what it shares with `update`.
struct Registration {
    id: String,
    shared: Arc<RegShared>,
    cancel: CancellationToken,
    /// Returns the lease it held when it stopped.
    task: JoinHandle<Option<i64>>,
}

/// Shared by the keepalive task (the only writer of the node's key after `register`) and
/// `update`.
struct RegShared {
    /// Latest info with its generation (incremented by every `update`).
    latest: StdMutex<(u64, NodeInfo)>,
    /// Wakes the task to publish a new generation.
    kick: Notify,
    /// Generation last written to etcd.
    published: watch::Sender<u64>,
}

impl RegShared {
    fn latest(&self) -> (u64, NodeInfo) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_latest(&self, node: NodeInfo) -> u64 {
        let mut l = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        l.0 += 1;
        l.1 = node;
        l.0
    }
}

impl EtcdDiscovery {
    /// Connects (within `connect_timeout`); error if etcd is unreachable or refuses credentials.
    ///
    /// The connection is checked by reading the prefix, so missing read permissions are reported
    /// here too.
    pub async fn connect(config: EtcdConfig) -> Result<Self, DiscoveryError> {
        let connect_timeout = config.validate()?;
        let options = ConnectOptions {
            connect_timeout,
            keep_alive: Some((H2_KEEPALIVE_INTERVAL, H2_KEEPALIVE_TIMEOUT)),
            credentials: config
                .user
                .as_ref()
                .map(|u| (u.clone(), config.password.clone().unwrap_or_default())),
        };
        let probe = async {
            let client = Client::connect(&config.endpoints, options).await?;
            client.get_prefix(config.prefix.as_bytes(), true).await?;
            Ok::<_, rookery_etcd::Error>(client)
        };
        let client = match tokio::time::timeout(connect_timeout, probe).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(classify(e)),
            Err(_) => {
                return Err(DiscoveryError::unavailable(format!(
                    "etcd at {} did not answer within {connect_timeout:?}",
                    config.endpoints.join(",")
                )))
            }
        };
        Ok(Self {
            client,
            prefix: config.prefix,
            // Checked by validate().
            ttl: config.ttl as i64,
            cancel: CancellationToken::new(),
            registration: tokio::sync::Mutex::new(Slot::default()),
        })
    }

    /// Stops background tasks (keepalive, watch) without revoking; used on drop paths.
    ///
    /// The node's key then expires after the TTL; watch receivers close. Further `register`,
    /// `update` and `watch` calls fail; `deregister` still revokes the lease.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    fn ensure_open(&self) -> Result<(), DiscoveryError> {
        if self.cancel.is_cancelled() {
            Err(closed())
        } else {
            Ok(())
        }
    }

    fn key(&self, id: &str) -> Result<String, DiscoveryError> {
        if id.is_empty() {
            return Err(DiscoveryError::config("etcd: empty node id"));
        }
        Ok(format!("{}{id}", self.prefix))
    }

    /// Asks the keepalive task to publish `node` and waits until it is written.
    async fn publish(&self, reg: &Registration, node: &NodeInfo) -> Result<(), DiscoveryError> {
        let mut published = reg.shared.published.subscribe();
        let generation = reg.shared.set_latest(node.clone());
        reg.shared.kick.notify_one();
        let written = async {
            tokio::time::timeout(OP_TIMEOUT, published.wait_for(|g| *g >= generation)).await
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(closed()),
            r = written => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(DiscoveryError::unavailable(
                    "etcd registration stopped",
                )),
                Err(_) => Err(DiscoveryError::unavailable(format!(
                    "etcd did not take the new info of {} within {OP_TIMEOUT:?}; it is kept and \
                     published as soon as etcd is reachable",
                    node.id
                ))),
            },
        }
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Discovery for EtcdDiscovery {
    async fn register(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        self.ensure_open()?;
        let key = self.key(&node.id)?;
        let value = encode(node)?;
        let mut slot = self.registration.lock().await;
        if let Some(reg) = &slot.active {
            if reg.id != node.id {
                return Err(DiscoveryError::config(format!(
                    "etcd: already registered as {}; deregister before registering {}",
                    reg.id, node.id
                )));
            }
            return self.publish(reg, node).await;
        }
        let client = self.client.clone();
        let grant = call(&self.cancel, OP_TIMEOUT, client.lease_grant(self.ttl))
            .await
            .map_err(CallError::into_discovery)?;
        let lease = grant.id;
        // Create-if-absent: a node id held by a live node is never overwritten.
        let created = call(
            &self.cancel,
            OP_TIMEOUT,
            client.create(key.clone(), value, lease),
        )
        .await;
        let existing = match created {
            Ok(existing) => existing,
            Err(e) => {
                // The lease expires by itself after the TTL.
                return Err(e.into_discovery());
            }
        };
        if let Some(existing) = existing {
            // Not needed any more; if the revoke fails it expires after the TTL.
            let _ = call(&self.cancel, OP_TIMEOUT, client.lease_revoke(lease)).await;
            return Err(duplicate_id(&node.id, &existing, self.ttl));
        }
        let (published, _) = watch::channel(1);
        let shared = Arc::new(RegShared {
            latest: StdMutex::new((1, node.clone())),
            kick: Notify::new(),
            published,
        });
        let cancel = self.cancel.child_token();
        let keeper = Keeper {
            client,
            key,
            ttl: self.ttl,
            id: node.id.clone(),
            shared: shared.clone(),
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(keeper.run(lease, grant.ttl));
        slot.active = Some(Registration {
            id: node.id.clone(),
            shared,
            cancel,
            task,
        });
        slot.unrevoked = None;
        tracing::debug!(node = %node.id, lease, "registered in etcd");
        Ok(())
    }

    async fn update(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        self.ensure_open()?;
        self.key(&node.id)?;
        let slot = self.registration.lock().await;
        match &slot.active {
            None => Err(DiscoveryError::config(format!(
                "etcd: update of {} before register",
                node.id
            ))),
            Some(reg) if reg.id != node.id => Err(DiscoveryError::config(format!(
                "etcd: registered as {}, cannot update {}",
                reg.id, node.id
            ))),
            Some(reg) => self.publish(reg, node).await,
        }
    }

    async fn deregister(&self) -> Result<(), DiscoveryError> {
        let mut slot = self.registration.lock().await;
        let lease = match slot.active.take() {
            Some(reg) => {
                reg.cancel.cancel();
                // The task stops at its next await point; waiting for it guarantees it cannot
                // re-register after the revoke below.
                match reg.task.await {
                    Ok(lease) => lease,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd keepalive task failed");
                        None
                    }
                }
            }
            None => slot.unrevoked.take(),
        };
        let Some(lease) = lease else {
            return Ok(());
        };
        let client = self.client.clone();
        // Not tied to `self.cancel`: deregister after close() still revokes.
        match call(
            &CancellationToken::new(),
            OP_TIMEOUT,
            client.lease_revoke(lease),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(CallError::Etcd(e)) if e.is_lease_not_found() => Ok(()),
            Err(e) => {
                slot.unrevoked = Some(lease);
                Err(DiscoveryError::unavailable(format!(
                    "revoking the etcd lease failed ({e}); keepalive stopped, the node expires \
                     after {} s",
                    self.ttl
                )))
            }
        }
    }

    async fn watch(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError> {
        self.ensure_open()?;
        let client = self.client.clone();
        let resp = call(
            &self.cancel,
            OP_TIMEOUT,
            client.get_prefix(self.prefix.as_bytes(), false),
        )
        .await
        .map_err(CallError::into_discovery)?;
        let (snapshot, revision) = read_snapshot(&self.prefix, &resp);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let watcher = Watcher {
            client,
            prefix: self.prefix.clone(),
            cancel: self.cancel.clone(),
            known: HashMap::new(),
        };
        tokio::spawn(watcher.run(tx, snapshot, revision));
        Ok(rx)
    }
}

// ---------------------------------------------------------------------------------------------
// Keepalive / re-registration task.

struct Keeper {
    client: Client,
    key: String,
    ttl: i64,
    /// The node id (for the message when another node took it while our lease was lost).
    id: String,
    shared: Arc<RegShared>,
    cancel: CancellationToken,
}

impl Keeper {
    /// Keeps the node registered until cancelled; returns the lease it holds then.
    async fn run(self, lease: i64, granted_ttl: i64) -> Option<i64> {
        let mut lease = Some(lease);
        let mut period = keepalive_period(granted_ttl, self.ttl);
        let mut published = *self.shared.published.borrow();
        let mut need_put = false;
        let mut stream: Option<(LeaseKeeper, KeepAliveStream)> = None;
        // After a lost lease the key is written again only if absent: another node may have
        // taken the id while this one was cut off.
        let mut must_create = false;
        let mut next_keepalive = Instant::now() + period;
        let mut backoff = Backoff::new();
        let mut failing = false;
        loop {
            // 1. A lease.
            let id = match lease {
                Some(id) => id,
                None => {
                    match call(&self.cancel, OP_TIMEOUT, self.client.lease_grant(self.ttl)).await {
                        Ok(grant) => {
                            lease = Some(grant.id);
                            period = keepalive_period(grant.ttl, self.ttl);
                            need_put = true;
                            must_create = true;
                            stream = None;
                            grant.id
                        }
                        Err(CallError::Cancelled) => return lease,
                        Err(e) => {
                            self.failure("granting a lease", &e, &mut failing);
                            if !backoff.wait(&self.cancel).await {
                                return lease;
                            }
                            continue;
                        }
                    }
                }
            };

            // 2. The latest info written under it.
            let (generation, info) = self.shared.latest();
            let mut wrote = false;
            if need_put || generation != published {
                let value = match serde_json::to_string(&info) {
                    Ok(v) => v,
                    Err(e) => {
                        // Cannot happen for NodeInfo; don't spin on it.
                        tracing::error!(error = %e, "cannot encode node info");
                        published = generation;
                        continue;
                    }
                };
                let put = async {
                    if must_create {
                        self.client.create(self.key.clone(), value, id).await
                    } else {
                        self.client
                            .put(self.key.clone(), value, id)
                            .await
                            .map(|_| None)
                    }
                };
                match call(&self.cancel, OP_TIMEOUT, put).await {
                    Ok(Some(existing)) => {
                        let error = duplicate_id(&self.id, &existing, self.ttl);
                        self.failure("registering again", &error, &mut failing);
                        if !backoff.wait(&self.cancel).await {
                            return lease;
                        }
                        continue;
                    }
                    Ok(None) => {
                        need_put = false;
                        must_create = false;
                        wrote = true;
                        published = generation;
                        self.shared.published.send_replace(generation);
                    }
                    Err(CallError::Cancelled) => return lease,
                    Err(CallError::Etcd(e)) if e.is_lease_not_found() => {
                        self.lease_lost(id);
                        lease = None;
                        continue;
                    }
                    Err(e) => {
                        self.failure("writing the node", &e, &mut failing);
                        if !backoff.wait(&self.cancel).await {
                            return lease;
                        }
                        continue;
                    }
                }
            }

            // 3. A keepalive stream.
            if stream.is_none() {
                match call(&self.cancel, OP_TIMEOUT, self.client.lease_keep_alive(id)).await {
                    Ok(s) => {
                        stream = Some(s);
                        next_keepalive = Instant::now() + period;
                    }
                    Err(CallError::Cancelled) => return lease,
                    Err(CallError::Etcd(e)) if e.is_lease_not_found() => {
                        self.lease_lost(id);
                        lease = None;
                        continue;
                    }
                    Err(e) => {
                        self.failure("opening the lease keepalive", &e, &mut failing);
                        if !backoff.wait(&self.cancel).await {
                            return lease;
                        }
                        continue;
                    }
                }
            }
            if failing {
                failing = false;
                tracing::info!(key = %self.key, lease = id, "etcd registration restored");
                if !wrote {
                    // Write the node again in case its key was lost meanwhile (cheap; watchers
                    // skip identical values).
                    need_put = true;
                    continue;
                }
            }
            backoff.reset();

            // 4. Wait for the next keepalive or an update.
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return lease,
                _ = self.shared.kick.notified() => continue,
                _ = tokio::time::sleep_until(next_keepalive) => {}
            }
            let Some((keeper, responses)) = stream.as_mut() else {
                continue;
            };
            let answer = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            let limit = period.clamp(Duration::from_secs(1), OP_TIMEOUT);
            match call(&self.cancel, limit, answer).await {
                Ok(Some(resp)) if resp.ttl > 0 => {
                    next_keepalive = Instant::now() + period;
                }
                Ok(Some(_)) => {
                    self.lease_lost(id);
                    lease = None;
                    stream = None;
                }
                Err(CallError::Cancelled) => return lease,
                Ok(None) => {
                    stream = None;
                    self.failure("keeping the lease alive", &"stream ended", &mut failing);
                    if !backoff.wait(&self.cancel).await {
                        return lease;
                    }
                }
                Err(e) => {
                    stream = None;
                    self.failure("keeping the lease alive", &e, &mut failing);
                    if !backoff.wait(&self.cancel).await {
                        return lease;
                    }
                }
            }
        }
    }

    fn failure(&self, what: &str, error: &dyn fmt::Display, failing: &mut bool) {
        if *failing {
            tracing::debug!(key = %self.key, %error, "etcd: {what} failed again; retrying");
        } else {
            *failing = true;
            tracing::warn!(key = %self.key, %error, "etcd: {what} failed; retrying with backoff");
        }
    }

    fn lease_lost(&self, lease: i64) {
        tracing::warn!(
            key = %self.key,
            lease,
            "etcd lease expired (etcd was unreachable for longer than the TTL); registering again"
        );
    }
}

/// Keepalive period: a third of the TTL etcd granted (or asked for, if it reported none).
fn keepalive_period(granted_ttl: i64, asked_ttl: i64) -> Duration {
    let ttl = if granted_ttl > 0 {
        granted_ttl
    } else {
        asked_ttl
    };
    Duration::from_millis((ttl.max(1) as u64) * 1000 / 3)
}

// ---------------------------------------------------------------------------------------------
// Watch task.

struct Watcher {
    client: Client,
    prefix: String,
    cancel: CancellationToken,
    /// What the receiver was told: id -> info.
    known: HashMap<String, NodeInfo>,
}

/// Why a watch stream was given up.
enum WatchEnd {
    /// Shut down or the receiver is gone.
    Stop,
    /// Resync and watch again.
    Resync(String),
}

impl Watcher {
    async fn run(
        mut self,
        tx: mpsc::Sender<DiscoveryEvent>,
        snapshot: BTreeMap<String, NodeInfo>,
        revision: i64,
    ) {
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {}
            _ = tx.closed() => {}
            _ = self.watch_forever(&tx, snapshot, revision) => {}
        }
    }

    async fn watch_forever(
        &mut self,
        tx: &mpsc::Sender<DiscoveryEvent>,
        snapshot: BTreeMap<String, NodeInfo>,
        mut revision: i64,
    ) {
        if !self.resync(tx, snapshot).await {
            return;
        }
        let mut backoff = Backoff::new();
        loop {
            match self.watch_from(tx, &mut revision, &mut backoff).await {
                WatchEnd::Stop => return,
                WatchEnd::Resync(why) => {
                    tracing::debug!(prefix = %self.prefix, reason = %why, "etcd watch lost; resyncing");
                }
            }
            let mut failing = false;
            loop {
                if !backoff.wait(&self.cancel).await {
                    return;
                }
                match call(
                    &self.cancel,
                    OP_TIMEOUT,
                    self.client.get_prefix(self.prefix.as_bytes(), false),
                )
                .await
                {
                    Ok(resp) => {
                        let (snapshot, rev) = read_snapshot(&self.prefix, &resp);
                        if !self.resync(tx, snapshot).await {
                            return;
                        }
                        revision = rev;
                        if failing {
                            tracing::info!(prefix = %self.prefix, "etcd watch restored");
                        }
                        break;
                    }
                    Err(CallError::Cancelled) => return,
                    Err(e) if failing => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "etcd resync failed again");
                    }
                    Err(e) => {
                        failing = true;
                        tracing::warn!(prefix = %self.prefix, error = %e, "etcd resync failed; retrying with backoff");
                    }
                }
            }
        }
    }

    /// Reports the difference between `snapshot` and what the receiver knows, then takes it as
    /// known. False if the receiver is gone.
    async fn resync(
        &mut self,
        tx: &mpsc::Sender<DiscoveryEvent>,
        snapshot: BTreeMap<String, NodeInfo>,
    ) -> bool {
        for event in diff(&self.known, &snapshot) {
            if tx.send(event).await.is_err() {
                return false;
            }
        }
        self.known = snapshot.into_iter().collect();
        true
    }

    /// Watches from `revision` until the stream fails; advances `revision` past every event seen.
    async fn watch_from(
        &mut self,
        tx: &mpsc::Sender<DiscoveryEvent>,
        revision: &mut i64,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let start = (*revision).max(0);
        let mut stream: WatchStream = match call(
            &self.cancel,
            OP_TIMEOUT,
            self.client.watch_prefix(self.prefix.as_bytes(), start),
        )
        .await
        {
            Ok(s) => s,
            Err(CallError::Cancelled) => return WatchEnd::Stop,
            Err(e) => return WatchEnd::Resync(format!("opening the watch: {e}")),
        };
        let mut created = false;
        let mut probing = false;
        loop {
            let limit = if !created || probing {
                OP_TIMEOUT
            } else {
                WATCH_PROBE_AFTER
            };
            let resp = match call(&self.cancel, limit, stream.message()).await {
                Ok(Some(resp)) => resp,
                Ok(None) => return WatchEnd::Resync("watch stream ended".into()),
                Err(CallError::Cancelled) => return WatchEnd::Stop,
                Err(CallError::TimedOut(_)) if created && !probing => {
                    // Silent for a while: make sure the stream is still alive.
                    if let Err(e) = stream.request_progress().await {
                        return WatchEnd::Resync(format!("progress request: {e}"));
                    }
                    probing = true;
                    continue;
                }
                Err(e) => return WatchEnd::Resync(format!("watch stream: {e}")),
            };
            probing = false;
            if resp.canceled {
                let why = if resp.compact_revision > 0 {
                    format!("revision {} compacted", resp.compact_revision)
                } else {
                    format!("watch cancelled: {}", resp.cancel_reason)
                };
                return WatchEnd::Resync(why);
            }
            if resp.created && !created {
                created = true;
                backoff.reset();
            }
            for event in &resp.events {
                let Some(kv) = &event.kv else { continue };
                *revision = (*revision).max(kv.mod_revision + 1);
                let change = match EventType::try_from(event.r#type).unwrap_or(EventType::Put) {
                    EventType::Put => match parse_entry(&self.prefix, &kv.key, &kv.value) {
                        Entry::Node(id, info) => apply_put(&mut self.known, id, *info),
                        Entry::Bad(id) => {
                            self.known.remove(&id).map(|_| DiscoveryEvent::Removed(id))
                        }
                        Entry::Foreign => None,
                    },
                    EventType::Delete => match node_id(&self.prefix, &kv.key) {
                        Some(id) => self
                            .known
                            .remove(id)
                            .map(|_| DiscoveryEvent::Removed(id.to_string())),
                        None => None,
                    },
                };
                if let Some(change) = change {
                    if tx.send(change).await.is_err() {
                        return WatchEnd::Stop;
                    }
                }
            }
        }
    }
}

/// The event a put of `info` under `id` means for a receiver that knows `known`; updates it.
fn apply_put(
    known: &mut HashMap<String, NodeInfo>,
    id: String,
    info: NodeInfo,
) -> Option<DiscoveryEvent> {
    match known.get(&id) {
        Some(old) if *old == info => None,
        Some(_) => {
            known.insert(id, info.clone());
            Some(DiscoveryEvent::Updated(info))
        }
        None => {
            known.insert(id, info.clone());
            Some(DiscoveryEvent::Added(info))
        }
    }
}

/// Events turning `known` into `now`: removals first, then additions and updates by id.
fn diff(
    known: &HashMap<String, NodeInfo>,
    now: &BTreeMap<String, NodeInfo>,
) -> Vec<DiscoveryEvent> {
    let mut gone: Vec<&String> = known.keys().filter(|id| !now.contains_key(*id)).collect();
    gone.sort();
    let mut events: Vec<DiscoveryEvent> = gone
        .into_iter()
        .map(|id| DiscoveryEvent::Removed(id.clone()))
        .collect();
    for (id, info) in now {
        match known.get(id) {
            None => events.push(DiscoveryEvent::Added(info.clone())),
            Some(old) if old != info => events.push(DiscoveryEvent::Updated(info.clone())),
            Some(_) => {}
        }
    }
    events
}

// ---------------------------------------------------------------------------------------------
// Keys and values.

/// What a key/value under the prefix holds.
#[derive(Debug, PartialEq)]
enum Entry {
    /// A node.
    Node(String, Box<NodeInfo>),
    /// A node id whose value is not a valid node.
    Bad(String),
    /// A key that is not a node id.
    Foreign,
}

/// The node id of a key, if it is `prefix + id` with a non-empty UTF-8 id.
fn node_id<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
    let id = key.strip_prefix(prefix.as_bytes())?;
    let id = std::str::from_utf8(id).ok()?;
    (!id.is_empty()).then_some(id)
}

fn parse_entry(prefix: &str, key: &[u8], value: &[u8]) -> Entry {
    let Some(id) = node_id(prefix, key) else {
        tracing::warn!(key = %String::from_utf8_lossy(key), "etcd: skipping a key that is not a node id");
        return Entry::Foreign;
    };
    match serde_json::from_slice::<NodeInfo>(value) {
        Ok(info) if info.id == id => Entry::Node(id.to_string(), Box::new(info)),
        Ok(info) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), node = %info.id, "etcd: skipping a node stored under another id");
            Entry::Bad(id.to_string())
        }
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "etcd: skipping a value that is not node info");
            Entry::Bad(id.to_string())
        }
    }
}

/// The nodes of a prefix read and the revision to watch from.
fn read_snapshot(prefix: &str, resp: &RangeResponse) -> (BTreeMap<String, NodeInfo>, i64) {
    let nodes = resp
        .kvs
        .iter()
        .filter_map(|kv| match parse_entry(prefix, &kv.key, &kv.value) {
            Entry::Node(id, info) => Some((id, *info)),
            Entry::Bad(_) | Entry::Foreign => None,
        })
        .collect();
    let revision = resp.header.as_ref().map_or(0, |h| h.revision + 1);
    (nodes, revision)
}

fn encode(node: &NodeInfo) -> Result<String, DiscoveryError> {
    serde_json::to_string(node)
        .map_err(|e| DiscoveryError::config(format!("cannot encode node info: {e}")))
}

/// The error for a node id that another live node holds (`existing` is its entry).
fn duplicate_id(id: &str, existing: &rookery_etcd::KeyValue, ttl: i64) -> DiscoveryError {
    let holder = serde_json::from_slice::<NodeInfo>(&existing.value)
        .map(|n| format!("type {}, address {}", n.node_type, n.address))
        .unwrap_or_else(|_| "an entry that is not node info".to_string());
    DiscoveryError::duplicate_id(
        id.to_string(),
        format!(
            "{holder}; choose another node.id, or if that node was killed, start again once its \
             registration expires (within {ttl} s)"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Calls, errors, backoff.

/// Why a guarded etcd call did not succeed.
#[derive(Debug)]
enum CallError {
    /// The back end shut down.
    Cancelled,
    /// No answer within the deadline.
    TimedOut(Duration),
    /// etcd (or the transport) answered with an error.
    Etcd(rookery_etcd::Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Cancelled => f.write_str("etcd discovery closed"),
            CallError::TimedOut(d) => write!(f, "etcd did not answer within {d:?}"),
            CallError::Etcd(e) => write!(f, "{e}"),
        }
    }
}

impl CallError {
    fn into_discovery(self) -> DiscoveryError {
        match self {
            CallError::Cancelled => closed(),
            CallError::TimedOut(_) => DiscoveryError::unavailable(self.to_string()),
            CallError::Etcd(e) => classify(e),
        }
    }
}

/// Runs one etcd call with a deadline, giving up early if `cancel` fires.
async fn call<T>(
    cancel: &CancellationToken,
    limit: Duration,
    fut: impl Future<Output = Result<T, rookery_etcd::Error>>,
) -> Result<T, CallError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(CallError::Cancelled),
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Etcd(e)),
            Err(_) => Err(CallError::TimedOut(limit)),
        },
    }
}

fn closed() -> DiscoveryError {
    DiscoveryError::unavailable("etcd discovery closed")
}

// gRPC status codes used by etcd.
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Maps an etcd client error to a discovery error.
fn classify(e: rookery_etcd::Error) -> DiscoveryError {
    use rookery_etcd::Error as E;
    match &e {
        E::InvalidEndpoint { .. } | E::NoEndpoints => DiscoveryError::config(format!("{e}")),
        E::Status(status) => {
            let code = i32::from(status.code());
            let message = status.message();
            let auth = code == GRPC_PERMISSION_DENIED
                || code == GRPC_UNAUTHENTICATED
                || (code == GRPC_INVALID_ARGUMENT
                    && (message.contains("authentication failed")
                        || message.contains("user name is empty")))
                || message.contains("authentication is not enabled");
            if auth {
                DiscoveryError::unauthorized(message.to_string())
            } else {
                DiscoveryError::unavailable(format!("etcd: {e}"))
            }
        }
        _ => DiscoveryError::unavailable(format!("etcd: {e}")),
    }
}

/// Retry delays: 200 ms doubling to 2 s, each with ±20 % jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// Sleeps for the next delay; false if cancelled meanwhile.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next.mul_f64(0.8 + fastrand::f64() * 0.4);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, weight: u32) -> NodeInfo {
        let mut n = NodeInfo::new(id, "room");
        n.weight = weight;
        n
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = EtcdConfig::default();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.prefix, "/rookery/nodes/");
        assert_eq!(c.ttl, 10);
        assert_eq!(c.validate().unwrap(), Duration::from_secs(5));
        let parsed: EtcdConfig = toml::from_str("ttl = 3\nuser = \"u\"\npassword = \"p\"").unwrap();
        assert_eq!(parsed.ttl, 3);
        assert_eq!(parsed.prefix, "/rookery/nodes/");
        assert!(
            !format!("{parsed:?}").contains("\"p\""),
            "password redacted"
        );
        assert!(toml::from_str::<EtcdConfig>("ttl_secs = 3").is_err());
        for bad in [
            EtcdConfig {
                ttl: 1,
                ..EtcdConfig::default()
            },
            EtcdConfig {
                endpoints: vec![],
                ..EtcdConfig::default()
            },
            EtcdConfig {
                prefix: String::new(),
                ..EtcdConfig::default()
            },
            EtcdConfig {
                connect_timeout: 0.0,
                ..EtcdConfig::default()
            },
            EtcdConfig {
                connect_timeout: f64::NAN,
                ..EtcdConfig::default()
            },
            EtcdConfig {
                password: Some("p".into()),
                ..EtcdConfig::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(e) if e.kind() == crate::DiscoveryErrorKind::Config),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn entries_are_parsed_or_skipped() {
        let p = "/n/";
        let json = serde_json::to_vec(&node("a", 1)).unwrap();
        assert_eq!(
            parse_entry(p, b"/n/a", &json),
            Entry::Node("a".into(), Box::new(node("a", 1)))
        );
        assert_eq!(
            parse_entry(p, b"/n/b", &json),
            Entry::Bad("b".into()),
            "id mismatch"
        );
        assert_eq!(parse_entry(p, b"/n/a", b"not json"), Entry::Bad("a".into()));
        assert_eq!(parse_entry(p, b"/n/", &json), Entry::Foreign);
        assert_eq!(parse_entry(p, b"/n/\xff", &json), Entry::Foreign);
        assert_eq!(node_id(p, b"/x/a"), None);
    }

    #[test]
    fn puts_and_diffs() {
        let mut known = HashMap::new();
        assert_eq!(
            apply_put(&mut known, "a".into(), node("a", 1)),
            Some(DiscoveryEvent::Added(node("a", 1)))
        );
        assert_eq!(apply_put(&mut known, "a".into(), node("a", 1)), None);
        assert_eq!(
            apply_put(&mut known, "a".into(), node("a", 2)),
            Some(DiscoveryEvent::Updated(node("a", 2)))
        );
        known.insert("gone".into(), node("gone", 1));
        known.insert("same".into(), node("same", 1));
        let now: BTreeMap<_, _> = [
            ("a".to_string(), node("a", 3)),
            ("new".to_string(), node("new", 1)),
            ("same".to_string(), node("same", 1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            diff(&known, &now),
            vec![
                DiscoveryEvent::Removed("gone".into()),
                DiscoveryEvent::Updated(node("a", 3)),
                DiscoveryEvent::Added(node("new", 1)),
            ]
        );
    }

    #[test]
    fn backoff_is_bounded() {
        let mut b = Backoff::new();
        for _ in 0..10 {
            b.next = (b.next * 2).min(BACKOFF_MAX);
        }
        assert_eq!(b.next, BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next, BACKOFF_MIN);
        assert_eq!(keepalive_period(3, 10), Duration::from_secs(1));
        assert_eq!(keepalive_period(0, 6), Duration::from_secs(2));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn prefix() -> impl Strategy<Value = String> {
            prop_oneof![Just("/rookery/nodes/".to_string()), "\\PC{1,12}"]
        }

        fn info(id: &str) -> NodeInfo {
            let mut n = NodeInfo::new(id, "room");
            n.modules = vec!["room".into()];
            n
        }

        proptest! {
            /// Whatever etcd holds under or beside the prefix, reading it never panics, and a
            /// key is a node id exactly when it is the prefix followed by a non-empty UTF-8 id.
            #[test]
            fn any_key_and_value_are_read_or_skipped(
                prefix in prefix(),
                key in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    (prefix(), proptest::collection::vec(any::<u8>(), 0..20))
                        .prop_map(|(p, rest)| [p.as_bytes(), &rest].concat()),
                ],
                value in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..80),
                    "\\PC{1,8}".prop_map(|id| serde_json::to_vec(&info(&id)).unwrap()),
                ],
            ) {
                let id = node_id(&prefix, &key);
                if let Some(id) = id {
                    prop_assert!(!id.is_empty());
                    prop_assert_eq!([prefix.as_bytes(), id.as_bytes()].concat(), key.clone());
                }
                match parse_entry(&prefix, &key, &value) {
                    Entry::Node(got, node) => {
                        prop_assert_eq!(Some(got.as_str()), id);
                        prop_assert_eq!(node.id, got);
                    }
                    Entry::Bad(got) => prop_assert_eq!(Some(got.as_str()), id),
                    Entry::Foreign => prop_assert_eq!(id, None),
                }
            }

            /// A node stored under `prefix + id` is read back as that node, and a value naming
            /// another id is a bad entry of this id (never a node under the wrong id).
            #[test]
            fn prefix_and_id_round_trip(
                prefix in prefix(),
                id in "\\PC{1,24}",
                other in "\\PC{1,24}",
            ) {
                let key = format!("{prefix}{id}");
                prop_assert_eq!(node_id(&prefix, key.as_bytes()), Some(id.as_str()));
                let json = serde_json::to_vec(&info(&id)).unwrap();
                prop_assert_eq!(
                    parse_entry(&prefix, key.as_bytes(), &json),
                    Entry::Node(id.clone(), Box::new(info(&id)))
                );
                prop_assume!(other != id);
                let json = serde_json::to_vec(&info(&other)).unwrap();
                prop_assert_eq!(parse_entry(&prefix, key.as_bytes(), &json), Entry::Bad(id));
            }

            /// Keys that do not start with the prefix, including ones that miss it by one byte or
            /// stop inside it, are foreign, whatever their value.
            #[test]
            fn keys_outside_the_prefix_are_foreign(
                prefix in prefix(),
                change in (any::<proptest::sample::Index>(), 1u8..=255),
                cut in any::<proptest::sample::Index>(),
                id in "\\PC{0,12}",
            ) {
                let json = serde_json::to_vec(&info("a")).unwrap();
                let mut near = prefix.clone().into_bytes();
                let at = change.0.index(near.len());
                near[at] = near[at].wrapping_add(change.1);
                near.extend_from_slice(id.as_bytes());
                let inside = &prefix.as_bytes()[..cut.index(prefix.len())];
                for key in [&near[..], inside] {
                    prop_assert!(!key.starts_with(prefix.as_bytes()));
                    prop_assert_eq!(node_id(&prefix, key), None);
                    prop_assert_eq!(parse_entry(&prefix, key, &json), Entry::Foreign);
                }
            }
        }
    }
}
