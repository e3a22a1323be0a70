//! A small etcd v3 client: the KV, lease, watch and auth calls a discovery back end needs, over
//! tonic.
//!
//! Why not a general etcd crate: the etcd clients on crates.io generate their gRPC code in a build
//! script, which needs `protoc` on the building machine. Here the code generated from etcd's own
//! `.proto` files (kept in `proto/`) is committed in `src/pb/`, so a build needs nothing but the
//! Rust toolchain; `tests/generated.rs` regenerates it and fails when the committed copy is stale.
//!
//! The client keeps one lazily connected HTTP/2 channel balanced over the endpoints. With a user
//! configured it authenticates at connect and attaches the token to every call; a call refused
//! for an expired token is retried once after authenticating again.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Code generated from etcd's `.proto` files (see the crate docs).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// etcd's stored key-value and event types.
    pub mod mvccpb {
        include!("pb/mvccpb.rs");
    }
    /// etcd's users, roles and permissions.
    pub mod authpb {
        include!("pb/authpb.rs");
    }
    /// etcd's v3 API: requests, responses and the service clients.
    pub mod etcdserverpb {
        include!("pb/etcdserverpb.rs");
    }
}

use pb::etcdserverpb as rpc;
pub use pb::mvccpb::{event::EventType, Event, KeyValue};
pub use rpc::{
    LeaseGrantResponse, LeaseKeepAliveResponse, PutResponse, RangeResponse, ResponseHeader,
    WatchResponse,
};

/// The channel every service client uses: the balanced channel with the auth token attached.
pub type AuthedChannel = InterceptedService<Channel, TokenInterceptor>;

/// Capacity of a stream's outgoing request queue (keepalives, progress requests): a caller sends
/// one and waits for its answer, so a handful is plenty.
const STREAM_QUEUE: usize = 4;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint is not a valid URI.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// No endpoint given.
    #[error("no etcd endpoints")]
    NoEndpoints,
    /// etcd (or the gRPC transport) answered with a status.
    #[error("etcd: {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// A stream's request queue is closed (the stream ended).
    #[error("etcd {0} stream closed")]
    StreamClosed(&'static str),
    /// A keepalive stream answered that the lease does not exist.
    #[error("etcd: lease not found")]
    LeaseNotFound,
}

impl Error {
    /// The gRPC status, if etcd answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// True if etcd says the lease does not exist (any more).
    pub fn is_lease_not_found(&self) -> bool {
        match self {
            Error::LeaseNotFound => true,
            Error::Status(s) => s.message().contains("lease not found"),
            _ => false,
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Deadline of establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive: ping interval and how long to wait for the answer.
    pub keep_alive: Option<(Duration, Duration)>,
    /// User and password (authentication is used when set).
    pub credentials: Option<(String, String)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keep_alive: None,
            credentials: None,
        }
    }
}

/// Adds the current auth token (if any) to every request.
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = self
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

/// An etcd client; cheap to clone (clones share the channel and the token).
#[derive(Clone)]
pub struct Client {
    kv: rpc::kv_client::KvClient<AuthedChannel>,
    lease: rpc::lease_client::LeaseClient<AuthedChannel>,
    watch: rpc::watch_client::WatchClient<AuthedChannel>,
    auth: rpc::auth_client::AuthClient<AuthedChannel>,
    credentials: Option<Arc<(String, String)>>,
    token: TokenInterceptor,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.credentials.as_ref().map(|c| c.0.as_str()))
            .finish_non_exhaustive()
    }
}

/// Runs `$call` (an expression using `$client`, a clone of the service client) and, when etcd
/// refuses it for an invalid token while credentials are configured, authenticates again and
/// runs it once more.
macro_rules! with_token {
    ($self:ident, $svc:ident, |$client:ident| $call:expr) => {{
        let mut $client = $self.$svc.clone();
        match $call.await {
            Err(status) if $self.token_expired(&status) => {
                $self.authenticate().await?;
                let mut $client = $self.$svc.clone();
                $call
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(Error::from)
            }
            r => r.map(tonic::Response::into_inner).map_err(Error::from),
        }
    }};
}

impl Client {
    /// Builds the channel and, with credentials, authenticates (the only network call here;
    /// without credentials the first call connects).
    pub async fn connect(endpoints: &[String], options: ConnectOptions) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut list = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let uri = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let mut endpoint =
                Endpoint::from_shared(uri).map_err(|err| Error::InvalidEndpoint {
                    endpoint: e.clone(),
                    reason: err.to_string(),
                })?;
            endpoint = endpoint.connect_timeout(options.connect_timeout);
            if let Some((interval, timeout)) = options.keep_alive {
                endpoint = endpoint
                    .http2_keep_alive_interval(interval)
                    .keep_alive_timeout(timeout)
                    .keep_alive_while_idle(false);
            }
            list.push(endpoint);
        }
        let channel = Channel::balance_list(list.into_iter());
        let token = TokenInterceptor::default();
        let authed = InterceptedService::new(channel, token.clone());
        let client = Self {
            kv: rpc::kv_client::KvClient::new(authed.clone()),
            lease: rpc::lease_client::LeaseClient::new(authed.clone()),
            watch: rpc::watch_client::WatchClient::new(authed.clone()),
            auth: rpc::auth_client::AuthClient::new(authed),
            credentials: options.credentials.map(Arc::new),
            token,
        };
        if client.credentials.is_some() {
            client.authenticate().await?;
        }
        Ok(client)
    }

    /// Asks etcd for a token with the configured credentials and uses it from now on.
    async fn authenticate(&self) -> Result<(), Error> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        // Without the old token: etcd refuses requests carrying an invalid one.
        *self.token.token.write().unwrap_or_else(|e| e.into_inner()) = None;
        let resp = self
            .auth
            .clone()
            .authenticate(rpc::AuthenticateRequest {
                name: credentials.0.clone(),
                password: credentials.1.clone(),
            })
            .await?
            .into_inner();
        let value = MetadataValue::try_from(resp.token.as_str())
            .map_err(|_| Status::internal("etcd returned a token that is not ASCII"))?;
        *self.token.token.write().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    fn token_expired(&self, status: &Status) -> bool {
        self.credentials.is_some()
            && status.code() == Code::Unauthenticated
            && status.message().contains("invalid auth token")
    }

    /// Reads one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<RangeResponse, Error> {
        let req = rpc::RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        with_token!(self, kv, |c| c.range(req.clone()))
    }

    /// Reads every key starting with `prefix` (only their number with `count_only`).
    pub async fn get_prefix(
        &self,
        prefix: &[u8],
        count_only: bool,
    ) -> Result<RangeResponse, Error> {
        let req = rpc::RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            count_only,
            ..Default::default()
        };
        with_token!(self, kv, |c| c.range(req.clone()))
    }

    /// Writes `key`, attached to `lease` unless it is 0.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<PutResponse, Error> {
        let req = rpc::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        };
        with_token!(self, kv, |c| c.put(req.clone()))
    }

    /// Writes `key` only if it does not exist, in one transaction. `Ok(None)` when written,
    /// `Ok(Some(kv))` with the existing entry when not.
    pub async fn create(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<Option<KeyValue>, Error> {
        let key = key.into();
        let req = rpc::TxnRequest {
            compare: vec![rpc::Compare {
                result: rpc::compare::CompareResult::Equal as i32,
                target: rpc::compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(rpc::compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![rpc::RequestOp {
                request: Some(rpc::request_op::Request::RequestPut(rpc::PutRequest {
                    key: key.clone(),
                    value: value.into(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![rpc::RequestOp {
                request: Some(rpc::request_op::Request::RequestRange(rpc::RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        };
        let resp = with_token!(self, kv, |c| c.txn(req.clone()))?;
        if resp.succeeded {
            return Ok(None);
        }
        let existing = resp.responses.into_iter().find_map(|op| match op.response {
            Some(rpc::response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
            _ => None,
        });
        // The read runs in the same transaction as the failed compare, so it sees the key.
        Ok(Some(existing.unwrap_or_default()))
    }

    /// Deletes one key; returns how many keys were deleted.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let req = rpc::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(with_token!(self, kv, |c| c.delete_range(req.clone()))?.deleted)
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, Error> {
        let req = rpc::LeaseGrantRequest { ttl, id: 0 };
        let resp = with_token!(self, lease, |c| c.lease_grant(req))?;
        if !resp.error.is_empty() {
            return Err(Status::unknown(resp.error).into());
        }
        Ok(resp)
    }

    /// Revokes a lease (its keys are deleted).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let req = rpc::LeaseRevokeRequest { id };
        with_token!(self, lease, |c| c.lease_revoke(req)).map(|_| ())
    }

    /// Seconds left of a lease (-1 when it does not exist).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<i64, Error> {
        let req = rpc::LeaseTimeToLiveRequest { id, keys: false };
        Ok(with_token!(self, lease, |c| c.lease_time_to_live(req))?.ttl)
    }

    /// Opens a keepalive stream for lease `id` and keeps it alive once (so a lease that is gone
    /// is reported here, as [`Error::LeaseNotFound`]).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<(LeaseKeeper, KeepAliveStream), Error> {
        let (tx, inner) = self
            .open_stream(rpc::LeaseKeepAliveRequest { id }, |rx| {
                let mut c = self.lease.clone();
                async move { c.lease_keep_alive(rx).await }
            })
            .await?;
        let mut stream = KeepAliveStream { inner };
        match stream.message().await? {
            Some(resp) if resp.ttl > 0 => Ok((LeaseKeeper { id, tx }, stream)),
            Some(_) => Err(Error::LeaseNotFound),
            None => Err(Error::StreamClosed("lease keepalive")),
        }
    }

    /// Watches every key starting with `prefix`, from `start_revision` (0: from now).
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<WatchStream, Error> {
        let create = rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
                rpc::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision,
                    ..Default::default()
                },
            )),
        };
        let (tx, inner) = self
            .open_stream(create, |rx| {
                let mut c = self.watch.clone();
                async move { c.watch(rx).await }
            })
            .await?;
        Ok(WatchStream { tx, inner })
    }

    /// Opens a bidirectional stream whose request queue holds `first` (etcd sends a stream's
    /// headers only once it has a request); retried once after authenticating again when the
    /// token had expired.
    async fn open_stream<T, R, F, Fut>(
        &self,
        first: T,
        open: F,
    ) -> Result<(mpsc::Sender<T>, Streaming<R>), Error>
    where
        T: Clone,
        F: Fn(ReceiverStream<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Streaming<R>>, Status>>,
    {
        let queue = || {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            // A new queue has room for its first request.
            let _ = tx.try_send(first.clone());
            (tx, ReceiverStream::new(rx))
        };
        let (tx, rx) = queue();
        match open(rx).await {
            Ok(resp) => Ok((tx, resp.into_inner())),
            Err(status) if self.token_expired(&status) => {
                self.authenticate().await?;
                let (tx, rx) = queue();
                Ok((tx, open(rx).await?.into_inner()))
            }
            Err(status) => Err(status.into()),
        }
    }

    /// The KV service client, for calls this wrapper does not cover (e.g. compaction).
    pub fn kv_client(&self) -> rpc::kv_client::KvClient<AuthedChannel> {
        self.kv.clone()
    }

    /// The auth service client, for administration (users, roles, enabling auth).
    pub fn auth_client(&self) -> rpc::auth_client::AuthClient<AuthedChannel> {
        self.auth.clone()
    }
}

/// Sends keepalives on an open keepalive stream.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    tx: mpsc::Sender<rpc::LeaseKeepAliveRequest>,
}

impl LeaseKeeper {
    /// Queues one keepalive; its answer arrives on the [`KeepAliveStream`].
    pub async fn keep_alive(&mut self) -> Result<(), Error> {
        self.tx
            .send(rpc::LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::StreamClosed("lease keepalive"))
    }
}

/// Answers of a keepalive stream.
#[derive(Debug)]
pub struct KeepAliveStream {
    inner: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// The next answer; `None` when the stream ended.
    pub async fn message(&mut self) -> Result<Option<LeaseKeepAliveResponse>, Error> {
        Ok(self.inner.message().await?)
    }
}

/// An open watch.
#[derive(Debug)]
pub struct WatchStream {
    tx: mpsc::Sender<rpc::WatchRequest>,
    inner: Streaming<WatchResponse>,
}

impl WatchStream {
    /// The next response (events, progress, or cancellation); `None` when the stream ended.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        Ok(self.inner.message().await?)
    }

    /// Asks etcd for a progress notification (an empty response with the current revision).
    pub async fn request_progress(&mut self) -> Result<(), Error> {
        let req = rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::ProgressRequest(
                rpc::WatchProgressRequest {},
            )),
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| Error::StreamClosed("watch"))
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty, or all 0xff: every key from `prefix` on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
