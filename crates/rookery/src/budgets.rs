//! Size and layout budgets the tests enforce, in one place, each with its reason. A change that
//! breaks one should say why the new size is worth it (and BENCHMARKS.md has the figures).

/// The size of the future a function returns, without calling it.
fn future_size<Args, Fut>(_: impl FnOnce(Args) -> Fut) -> usize {
    std::mem::size_of::<Fut>()
}

/// Every open connection costs its task's size: the handshake, a running request, the
/// WebSocket upgrade and the end's hooks are boxed while they run, so idle connections carry
/// only the running phase (reader and writer).
#[test]
fn an_idle_connection_task_stays_small() {
    let size = future_size(|(app, transport, remote, acceptor, permit)| {
        let wire = std::sync::Arc::new(crate::session::codec::Pomelo);
        crate::gateway::conn::serve(app, wire, transport, remote, acceptor, permit)
    });
    eprintln!("connection future: {size} bytes");
    assert!(size <= 800, "connection future is {size} bytes");
}

/// A request for a module on another node is boxed with all of its forward's state, and each
/// request writes and reads that box: the envelope is not kept across the wait for the reply,
/// and neither is the local-dispatch branch.
#[test]
fn a_forwarded_request_stays_small() {
    let size = future_size(
        |(rpc, route, field, payload, session): (
            &'static crate::rpc::Rpc,
            &'static str,
            bytes::Bytes,
            bytes::Bytes,
            &'static crate::Session,
        )| rpc.forward(route, field, payload, session),
    );
    eprintln!("forward future: {size} bytes");
    assert!(size <= 700, "forward future is {size} bytes");
}

/// The fields every request touches (closed flag, serializer, last-seen mark, outbound queue),
/// with the `Arc`'s counts before them, fit in two cache lines: at a thousand connections they
/// are cold each time a connection's turn comes.
#[test]
fn session_hot_fields_fit_in_two_cache_lines() {
    let end = crate::session::hot_fields_end();
    eprintln!("session hot fields end at {end} bytes");
    assert!(end <= 128, "hot fields end at {end} bytes");
}

/// The outbound queue is one of those hot fields; it holds its oldest packet inline and the
/// rest behind a pointer, so it takes its share of the two lines and no more.
#[test]
fn the_outbound_queue_stays_small() {
    let size = std::mem::size_of::<crate::outbound::Outbound>();
    eprintln!("outbound queue: {size} bytes");
    assert!(size <= 88, "outbound queue is {size} bytes");
}

/// `Result<T, Error>` is returned by every handler: the error is one pointer, so a result is
/// no bigger than its value plus a word.
#[test]
fn an_error_is_one_pointer() {
    assert_eq!(
        std::mem::size_of::<crate::Error>(),
        std::mem::size_of::<usize>()
    );
    assert_eq!(
        std::mem::size_of::<Result<(), crate::Error>>(),
        std::mem::size_of::<usize>()
    );
}

/// A WebSocket connection holds its stream inline (inside the split halves' shared state):
/// whatever the stream type carries, every idle WebSocket connection carries. A TLS stream is
/// kilobytes, so it is boxed.
#[test]
fn a_websocket_stream_stays_small() {
    let size = std::mem::size_of::<tokio_tungstenite::WebSocketStream<crate::gateway::WsIo>>();
    eprintln!("websocket stream: {size} bytes");
    assert!(size <= 512, "websocket stream is {size} bytes");
}
