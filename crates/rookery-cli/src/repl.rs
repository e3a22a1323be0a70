//! `rookery client`: an interactive client in the spirit of pitaya-cli.
//!
//! Reads commands from stdin, one per line, and prints what the server answers:
//!
//! ```text
//! request ROUTE [JSON]   send a request (body defaults to {}), wait for and print the answer
//! notify ROUTE [JSON]    send a notify
//! routes                 print the route dictionary from the handshake
//! help                   print this help
//! quit | exit            close the connection and exit
//! ```
//!
//! Output lines: `< ROUTE {json}` for a response, `! ROUTE CODE msg` for an error, `push ROUTE {json}`
//! for a push (printed as it arrives). Payloads that are not JSON print as `0x` and hex.
//!
//! Scripting: lines are processed in order and each request is answered before the next line is
//! read, so piped output is deterministic. At end of input the client closes and exits 0 without
//! waiting for further pushes. Lines starting with `#` are comments.

use std::io::IsTerminal;
use std::time::Duration;

use rookery_client::{Client, ClientError, ClientOptions, Event, Push};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// Arguments of `rookery client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address: host:port (TCP) or ws://host:port/path
    pub addr: String,
    /// Request timeout in seconds
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Handshake user data as JSON (e.g. '{"token":"..."}')
    #[arg(long)]
    pub user: Option<String>,
}

/// Error type of [`run`].
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One parsed input line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `request ROUTE [JSON]`.
    Request {
        /// Route to call.
        route: String,
        /// Request body.
        body: serde_json::Value,
    },
    /// `notify ROUTE [JSON]`.
    Notify {
        /// Route to notify.
        route: String,
        /// Notify body.
        body: serde_json::Value,
    },
    /// `routes`: print the route dictionary.
    Routes,
    /// `help`.
    Help,
    /// `quit` or `exit`.
    Quit,
    /// Blank line or `# comment`.
    Empty,
}

const HELP: &str = "\
commands:
  request ROUTE [JSON]   send a request (body defaults to {}) and print the answer
  notify ROUTE [JSON]    send a notify
  routes                 print the route dictionary
  help                   print this help
  quit | exit            close the connection and exit";

/// Parses one input line.
pub fn parse_line(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Command::Empty);
    }
    let (word, rest) = split_word(line);
    match word {
        "request" | "notify" => {
            let (route, json) = split_word(rest);
            if route.is_empty() {
                return Err(format!("usage: {word} ROUTE [JSON]"));
            }
            let body = if json.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?
            };
            let route = route.to_string();
            Ok(if word == "request" {
                Command::Request { route, body }
            } else {
                Command::Notify { route, body }
            })
        }
        "routes" | "help" | "quit" | "exit" if !rest.is_empty() => {
            Err(format!("{word} takes no arguments"))
        }
        "routes" => Ok(Command::Routes),
        "help" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        other => Err(format!("unknown command {other:?} (try help)")),
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Runs `rookery client`: connects, then executes stdin lines until end of input, `quit`, or a kick.
pub async fn run(args: ClientArgs) -> Result<(), Error> {
    let user = match &args.user {
        Some(u) => serde_json::from_str(u).map_err(|e| format!("--user is not valid JSON: {e}"))?,
        None => serde_json::Value::Null,
    };
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(args.timeout),
        user,
        ..Default::default()
    };
    let client = Client::connect(&args.addr, opts)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let (heartbeat, routes) = client
        .handshake()
        .sys
        .as_ref()
        .map_or((0, 0), |s| (s.heartbeat, s.dict.len()));
    println!(
        "connected to {} (serializer {}, heartbeat {heartbeat}s, {routes} routes)",
        args.addr,
        client.serializer().as_str()
    );
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!("type help for commands");
    }
    let result = session(&client, BufReader::new(tokio::io::stdin())).await;
    client.close().await;
    result
}

/// How the session ended.
enum Outcome {
    /// Keep reading lines.
    Continue,
    /// `quit`, end of input, or a kick: exit 0.
    Done,
}

/// Reads lines from `input` and executes them, printing pushes as they arrive.
async fn session<R: AsyncBufRead + Unpin>(client: &Client, input: R) -> Result<(), Error> {
    let mut lines = input.lines();
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            event = client.next_event(), if events_open => match event {
                Some(event) => {
                    if let Outcome::Done = on_event(event) {
                        return Ok(());
                    }
                }
                None => return Err(closed_error(client).await),
            },
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                match parse_line(&line) {
                    Err(e) => eprintln!("error: {e}"),
                    Ok(command) => {
                        if let Outcome::Done = execute(client, command, &mut events_open).await? {
                            return Ok(());
                        }
                        if !events_open {
                            return Err(closed_error(client).await);
                        }
                    }
                }
            }
        }
    }
}

/// Executes one command; a request is awaited while pushes keep being printed.
async fn execute(
    client: &Client,
    command: Command,
    events_open: &mut bool,
) -> Result<Outcome, Error> {
    match command {
        Command::Empty => {}
        Command::Help => println!("{HELP}"),
        Command::Quit => return Ok(Outcome::Done),
        Command::Routes => {
            let mut dict: Vec<(&str, u16)> = client
                .handshake()
                .sys
                .iter()
                .flat_map(|s| s.dict.iter().map(|(k, v)| (k.as_str(), *v)))
                .collect();
            dict.sort();
            if dict.is_empty() {
                println!("(no routes in the dictionary)");
            }
            for (route, code) in dict {
                println!("{route} {code}");
            }
        }
        Command::Notify { route, body } => {
            let payload = serde_json::to_vec(&body)?;
            if let Err(e) = client.notify_raw(&route, payload.into()).await {
                println!("{}", format_error(&route, &e));
                if matches!(e, ClientError::Closed { .. }) {
                    return Ok(drain_events(client, events_open).await);
                }
            }
        }
        Command::Request { route, body } => {
            let payload = serde_json::to_vec(&body)?;
            let request = client.request_raw(&route, payload.into());
            tokio::pin!(request);
            loop {
                tokio::select! {
                    // Events first: a push the server sent before the response prints before it.
                    biased;
                    event = client.next_event(), if *events_open => match event {
                        Some(event) => {
                            if let Outcome::Done = on_event(event) {
                                return Ok(Outcome::Done);
                            }
                        }
                        None => *events_open = false,
                    },
                    reply = &mut request => {
                        match reply {
                            Ok(payload) => println!("< {route} {}", format_payload(&payload)),
                            Err(e) => {
                                println!("{}", format_error(&route, &e));
                                if matches!(e, ClientError::Closed { .. }) {
                                    return Ok(drain_events(client, events_open).await);
                                }
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    Ok(Outcome::Continue)
}

/// After the connection ended: prints the events still queued (the queue closes promptly).
async fn drain_events(client: &Client, events_open: &mut bool) -> Outcome {
    while *events_open {
        match client.next_event().await {
            Some(event) => {
                if let Outcome::Done = on_event(event) {
                    return Outcome::Done;
                }
            }
            None => *events_open = false,
        }
    }
    Outcome::Continue
}

/// Prints an event; a kick ends the session.
fn on_event(event: Event) -> Outcome {
    match event {
        Event::Push(Push { route, payload }) => {
            println!("push {route} {}", format_payload(&payload));
            Outcome::Continue
        }
        Event::Kick { reason } => {
            println!("kicked: {}", reason.as_deref().unwrap_or("(no reason)"));
            Outcome::Done
        }
    }
}

/// The error for a connection the server ended without a kick.
async fn closed_error(client: &Client) -> Error {
    match client.closed().await.reason {
        Some(r) => format!("connection closed: {r}").into(),
        None => "connection closed by the server".into(),
    }
}

/// Compact JSON when the payload is JSON, else `0x` and hex; `(empty)` for no bytes.
pub fn format_payload(payload: &[u8]) -> String {
    if payload.is_empty() {
        return "(empty)".into();
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(2 + payload.len() * 2);
            s.push_str("0x");
            for b in payload {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    }
}

/// `! ROUTE CODE msg` for a server error; other failures get a word for a code.
pub fn format_error(route: &str, e: &ClientError) -> String {
    match e {
        ClientError::Server { code, msg, .. } => format!("! {route} {code} {msg}"),
        ClientError::Timeout => format!("! {route} TIMEOUT no answer in time"),
        ClientError::Closed { .. } => format!("! {route} CLOSED {e}"),
        other => format!("! {route} ERROR {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_requests_and_notifies() {
        assert_eq!(
            parse_line("request room.room.join {\"name\": \"ann\"}"),
            Ok(Command::Request {
                route: "room.room.join".into(),
                body: json!({"name": "ann"})
            })
        );
        assert_eq!(
            parse_line("  request   a.b.c  "),
            Ok(Command::Request {
                route: "a.b.c".into(),
                body: json!({})
            })
        );
        assert_eq!(
            parse_line("notify chat.room.say\t{\"text\": \"hi there\"}"),
            Ok(Command::Notify {
                route: "chat.room.say".into(),
                body: json!({"text": "hi there"})
            })
        );
        assert_eq!(
            parse_line("request a.b.c [1, 2]"),
            Ok(Command::Request {
                route: "a.b.c".into(),
                body: json!([1, 2])
            })
        );
    }

    #[test]
    fn parses_simple_commands() {
        assert_eq!(parse_line("routes"), Ok(Command::Routes));
        assert_eq!(parse_line("help"), Ok(Command::Help));
        assert_eq!(parse_line("quit"), Ok(Command::Quit));
        assert_eq!(parse_line("exit\n"), Ok(Command::Quit));
        assert_eq!(parse_line(""), Ok(Command::Empty));
        assert_eq!(parse_line("   "), Ok(Command::Empty));
        assert_eq!(parse_line("# a comment"), Ok(Command::Empty));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse_line("request").unwrap_err().starts_with("usage"));
        assert!(parse_line("notify  ").unwrap_err().starts_with("usage"));
        assert!(parse_line("request a.b.c {nope")
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(parse_line("request a.b.c {} trailing")
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(parse_line("routes now").is_err());
        assert!(parse_line("frobnicate").unwrap_err().contains("unknown"));
    }

    #[test]
    fn formats_payloads_and_errors() {
        assert_eq!(format_payload(br#"{ "a" : 1 }"#), r#"{"a":1}"#);
        assert_eq!(format_payload(b"\x01\xff"), "0x01ff");
        assert_eq!(format_payload(b""), "(empty)");
        let e = ClientError::Server {
            code: "PIT-404".into(),
            msg: "route not found".into(),
            metadata: None,
        };
        assert_eq!(format_error("a.b.c", &e), "! a.b.c PIT-404 route not found");
        assert_eq!(
            format_error("a.b.c", &ClientError::Timeout),
            "! a.b.c TIMEOUT no answer in time"
        );
    }
}
