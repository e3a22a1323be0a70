//! A Rookery node on port 0, and where its acceptors ended up.
//!
//! Tests never pick ports for game clients: the acceptors bind `127.0.0.1:0` and the tests ask
//! the running server for its addresses, so any number of tests can run at once.

use rookery::{Config, RunningServer, ServerBuilder};
use rookery_client::{Client, ClientOptions};

/// A default config with both acceptors (TCP and WebSocket) on `127.0.0.1:0`.
pub fn config() -> Config {
    let mut c = Config::default();
    c.gateway.tcp = Some("127.0.0.1:0".into());
    c.gateway.ws = Some("127.0.0.1:0".into());
    c
}

/// Starts `builder` (made from [`config`], or a config of the test's own); a node that fails to
/// start fails the test with the start error.
pub async fn start(builder: ServerBuilder) -> RunningServer {
    builder.start().await.expect("server starts")
}

/// The address of `server`'s TCP acceptor, as a client connects to it.
pub fn tcp_addr(server: &RunningServer) -> String {
    server.tcp_addr().expect("a TCP acceptor").to_string()
}

/// The URL of `server`'s WebSocket acceptor, as a client connects to it.
pub fn ws_url(server: &RunningServer) -> String {
    format!("ws://{}/", server.ws_addr().expect("a WebSocket acceptor"))
}

/// A client connected to `server`'s TCP acceptor with default options.
pub async fn client(server: &RunningServer) -> Client {
    Client::connect(&tcp_addr(server), ClientOptions::default())
        .await
        .expect("client connects")
}
