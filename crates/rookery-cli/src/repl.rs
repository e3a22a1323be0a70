//! `rookery client`: an interactive client in the spirit of pitaya-cli.
//!
//! Reads commands, one per line, and prints what the server answers:
//!
//! ```text
//! request ROUTE [JSON]   send a request (body defaults to {}), wait for and print the answer
//! notify ROUTE [JSON]    send a notify
//! routes                 print the route dictionary from the handshake
//! connect ADDR           connect to ADDR (host:port or ws://host:port/path), closing any other
//! disconnect             close the connection
//! help                   print this help
//! quit | exit            close the connection and exit
//! ```
//!
//! Output lines: `< ROUTE {json}` for a response, `! ROUTE CODE msg` for an error, `push ROUTE {json}`
//! for a push (printed as it arrives). Payloads that are not JSON print as `0x` and hex.
//!
//! On a terminal (stdin and stdout), lines are read with a line editor (rustyline): a prompt
//! naming the server, arrow-key editing, history kept in `~/.rookery_history`, Tab completion
//! of commands and of the routes in the server's handshake dictionary. Pushes are printed above
//! the line being typed without breaking it. A kick or a closed connection leaves the client
//! running, disconnected, for `connect`.
//!
//! Scripting (stdin not a terminal): lines are processed in order and each request is answered
//! before the next line is read, so piped output is deterministic. At end of input the client
//! closes and exits 0 without waiting for further pushes; a kick ends it with 0, a connection the
//! server closed or a failed `connect` with an error. Lines starting with `#` are comments.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use rookery_client::{Client, ClientError, ClientOptions, Event, Push};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter as _, Helper};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::sync::mpsc;

/// Arguments of `rookery client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address: host:port (TCP), tls://host:port (TCP over TLS), kcp://host:port (KCP), ws://host:port/path or
    /// wss://host:port/path (WebSocket); without it, start disconnected (then `connect ADDR`)
    pub addr: Option<String>,
    /// Trust the CA certificates in this PEM file for tls:// and wss:// (instead of the
    /// system's roots)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Do not check the server's certificate (self-signed test setups only)
    #[arg(long)]
    pub insecure: bool,
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
    /// `connect ADDR`.
    Connect {
        /// host:port or ws://host:port/path.
        addr: String,
    },
    /// `disconnect`.
    Disconnect,
    /// `routes`: print the route dictionary.
    Routes,
    /// `help`.
    Help,
    /// `quit` or `exit`.
    Quit,
    /// Blank line or `# comment`.
    Empty,
}

/// The commands, as typed (and completed).
pub const COMMANDS: [&str; 8] = [
    "connect",
    "disconnect",
    "exit",
    "help",
    "notify",
    "quit",
    "request",
    "routes",
];

const HELP: &str = "\
commands:
  request ROUTE [JSON]   send a request (body defaults to {}) and print the answer
  notify ROUTE [JSON]    send a notify
  routes                 print the route dictionary
  connect ADDR           connect to ADDR (host:port or ws://host:port/path)
  disconnect             close the connection
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
        "connect" => match split_word(rest) {
            (addr, "") if !addr.is_empty() => Ok(Command::Connect {
                addr: addr.to_string(),
            }),
            _ => Err("usage: connect ADDR (host:port or ws://host:port/path)".into()),
        },
        "routes" | "help" | "quit" | "exit" | "disconnect" if !rest.is_empty() => {
            Err(format!("{word} takes no arguments"))
        }
        "routes" => Ok(Command::Routes),
        "help" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        "disconnect" => Ok(Command::Disconnect),
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

/// Tab completion: the command in the first word, a route of the dictionary in the second word
/// of `request` and `notify`. Returns where the completed word starts and the candidates (each
/// followed by a space, as the next word comes after it).
pub fn complete(line: &str, pos: usize, routes: &[String]) -> (usize, Vec<String>) {
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    let start = before.rfind(char::is_whitespace).map_or(0, |i| {
        i + before[i..].chars().next().map_or(1, char::len_utf8)
    });
    let word = &before[start..];
    let earlier: Vec<&str> = before[..start].split_whitespace().collect();
    let candidates: Vec<String> = match earlier.as_slice() {
        [] => COMMANDS
            .iter()
            .filter(|c| c.starts_with(word))
            .map(|c| format!("{c} "))
            .collect(),
        ["request" | "notify"] => routes
            .iter()
            .filter(|r| r.starts_with(word))
            .map(|r| format!("{r} "))
            .collect(),
        _ => Vec::new(),
    };
    (start, candidates)
}

/// The line editor's helper: completion from [`complete`] over the routes of the connected
/// server (updated before each line).
#[derive(Default)]
struct ReplHelper {
    routes: Vec<String>,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = complete(line, pos, &self.routes);
        let pairs = words
            .into_iter()
            .map(|w| Pair {
                display: w.trim_end().to_string(),
                replacement: w,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

/// Where the history of the interactive client is kept.
fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".rookery_history"))
}

/// What the session asks of the line editor's thread before each line.
struct Ready {
    prompt: String,
    routes: Vec<String>,
}

/// What the line editor's thread hands back.
enum Typed {
    Line(String),
    /// Ctrl-D.
    Eof,
    Failed(String),
}

/// Lines in: stdin as it is (pipe), or the line editor's thread.
enum Input {
    Pipe(Lines<Box<dyn AsyncBufRead + Unpin + Send>>),
    Editor {
        typed: mpsc::Receiver<Typed>,
        ready: std::sync::mpsc::SyncSender<Ready>,
        /// A line has been asked for and not received yet.
        asked: bool,
    },
}

impl Input {
    /// Before waiting for a line: the editor shows the prompt, after the output so far, and
    /// reads one.
    async fn ask(&mut self, out: &Out, prompt: impl FnOnce() -> Ready) {
        if let Input::Editor { ready, asked, .. } = self {
            if !*asked {
                out.flush().await;
                // The editor's thread takes each Ready before it sends a line, and one is sent
                // per line: the slot is free. A thread that ended shows as end of input.
                let _ = ready.try_send(prompt());
                *asked = true;
            }
        }
    }

    /// The next line; `None` at end of input. Cancel-safe.
    async fn next_line(&mut self) -> Result<Option<String>, Error> {
        match self {
            Input::Pipe(lines) => Ok(lines.next_line().await?),
            Input::Editor { typed, asked, .. } => match typed.recv().await {
                Some(Typed::Line(line)) => {
                    *asked = false;
                    Ok(Some(line))
                }
                Some(Typed::Eof) | None => Ok(None),
                Some(Typed::Failed(e)) => Err(format!("line editor: {e}").into()),
            },
        }
    }
}

/// Lines out: stdout (pipe), or the line editor's printer, which prints above the line being
/// typed.
#[derive(Clone)]
enum Out {
    Stdout,
    Editor(mpsc::Sender<Print>),
}

/// What the printer's thread is asked to do.
enum Print {
    Line(String),
    /// Answer once everything before has been printed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Out {
    async fn line(&self, line: String) {
        match self {
            Out::Stdout => println!("{line}"),
            // Bounded: a terminal that does not keep up slows the session down.
            Out::Editor(tx) => {
                let _ = tx.send(Print::Line(line)).await;
            }
        }
    }

    /// Waits (bounded) until what was queued has been printed, so that a prompt comes after
    /// it rather than being drawn again below it.
    async fn flush(&self) {
        if let Out::Editor(tx) = self {
            let (done, printed) = tokio::sync::oneshot::channel();
            if tx.send(Print::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(FLUSH_WAIT, printed).await;
            }
        }
    }

    async fn error(&self, e: impl std::fmt::Display) {
        match self {
            Out::Stdout => eprintln!("error: {e}"),
            Out::Editor(_) => self.line(format!("error: {e}")).await,
        }
    }
}

/// Lines printed by the editor's printer, queued at most.
const PRINT_QUEUE: usize = 256;

/// How long a prompt waits for the output before it to be printed (rustyline's printer may
/// wait for the editor to read a line).
const FLUSH_WAIT: Duration = Duration::from_millis(200);

/// How long the client waits at exit for its editor and printer threads to finish.
const THREADS_END: Duration = Duration::from_secs(2);

/// The line editor on a thread of its own (reading a terminal blocks), and a printer thread
/// (rustyline's printer may wait for the editor); both end when the session drops its ends.
/// An error when the terminal cannot be driven (then the plain client runs).
fn start_editor() -> Result<(Input, Out, [std::thread::JoinHandle<()>; 2]), String> {
    let config = Config::builder()
        .max_history_size(10_000)
        .map_err(|e| e.to_string())?
        .history_ignore_dups(true)
        .map_err(|e| e.to_string())?
        .history_ignore_space(true)
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .build();
    let mut editor: Editor<ReplHelper, FileHistory> =
        Editor::with_config(config).map_err(|e| e.to_string())?;
    editor.set_helper(Some(ReplHelper::default()));
    let mut printer = editor
        .create_external_printer()
        .map_err(|e| e.to_string())?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing file is a first run.
        let _ = editor.load_history(path);
    }
    let (typed_tx, typed) = mpsc::channel(1);
    let (ready, ready_rx) = std::sync::mpsc::sync_channel::<Ready>(1);
    let (print_tx, mut print_rx) = mpsc::channel::<Print>(PRINT_QUEUE);
    let printer = std::thread::Builder::new()
        .name("rookery-printer".into())
        .spawn(move || {
            while let Some(print) = print_rx.blocking_recv() {
                match print {
                    Print::Line(mut line) => {
                        line.push('\n');
                        if printer.print(line).is_err() {
                            break;
                        }
                    }
                    Print::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let editor = std::thread::Builder::new()
        .name("rookery-editor".into())
        .spawn(move || {
            while let Ok(Ready { prompt, routes }) = ready_rx.recv() {
                if let Some(h) = editor.helper_mut() {
                    h.routes = routes;
                }
                let typed = loop {
                    match editor.readline(&prompt) {
                        Ok(line) => {
                            if !line.trim().is_empty() {
                                let _ = editor.add_history_entry(line.as_str());
                                if let Some(path) = &history {
                                    let _ = editor.append_history(path);
                                }
                            }
                            break Typed::Line(line);
                        }
                        // Ctrl-C drops the line being typed.
                        Err(ReadlineError::Interrupted) => continue,
                        Err(ReadlineError::Eof) => {
                            // The shell's prompt comes on a line of its own.
                            println!();
                            break Typed::Eof;
                        }
                        Err(e) => break Typed::Failed(e.to_string()),
                    }
                };
                let last = !matches!(typed, Typed::Line(_));
                if typed_tx.blocking_send(typed).is_err() || last {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let input = Input::Editor {
        typed,
        ready,
        asked: false,
    };
    Ok((input, Out::Editor(print_tx), [editor, printer]))
}

/// Runs `rookery client`: connects (when given an address), then executes lines until end of
/// input or `quit` (or, reading a pipe, a kick or a closed connection).
pub async fn run(args: ClientArgs) -> Result<(), Error> {
    let user = match &args.user {
        Some(u) => serde_json::from_str(u).map_err(|e| format!("--user is not valid JSON: {e}"))?,
        None => serde_json::Value::Null,
    };
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(args.timeout),
        user,
        tls: rookery_client::TlsOptions {
            ca: args.ca.clone(),
            insecure: args.insecure,
        },
        ..Default::default()
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let editor = if terminal {
        match start_editor() {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("no line editing ({e}): reading plain lines");
                None
            }
        }
    } else {
        None
    };
    let (input, out, threads) = match editor {
        Some((input, out, threads)) => (input, out, Some(threads)),
        None => {
            let stdin: Box<dyn AsyncBufRead + Unpin + Send> =
                Box::new(BufReader::new(tokio::io::stdin()));
            (Input::Pipe(stdin.lines()), Out::Stdout, None)
        }
    };
    let mut repl = Repl {
        opts,
        conn: None,
        out,
        interactive: threads.is_some(),
    };
    let result = repl.start(args.addr.as_deref(), input).await;
    if let Some(conn) = repl.conn.take() {
        conn.client.close().await;
    }
    // The editor's thread ends once its channels are dropped (it is not reading a line now),
    // the printer's once it has printed the last lines.
    drop(repl);
    if let Some(threads) = threads {
        let joined = tokio::task::spawn_blocking(move || threads.map(|t| t.join()));
        let _ = tokio::time::timeout(THREADS_END, joined).await;
    }
    result
}

/// A connection of the session.
struct Conn {
    client: Client,
    addr: String,
    /// The client's event queue is open (it closes after the connection ended).
    events_open: bool,
}

/// The session: the connection (if any) and where output goes.
struct Repl {
    opts: ClientOptions,
    conn: Option<Conn>,
    out: Out,
    /// On a terminal: the session outlives kicks and closed connections.
    interactive: bool,
}

/// How the session goes on.
enum Outcome {
    /// Keep reading lines.
    Continue,
    /// `quit`, or (reading a pipe) a kick: exit 0.
    Done,
}

/// What woke the session.
enum Step {
    Event(Option<Event>),
    Line(Result<Option<String>, Error>),
}

async fn next_event(conn: &Option<Conn>) -> Option<Event> {
    match conn {
        Some(c) => c.client.next_event().await,
        None => std::future::pending().await,
    }
}

impl Repl {
    async fn start(&mut self, addr: Option<&str>, mut input: Input) -> Result<(), Error> {
        if let Some(addr) = addr {
            if let Outcome::Done = self.connect(addr.to_string()).await? {
                return Ok(());
            }
        }
        if self.interactive {
            self.out.line("type help for commands".into()).await;
        }
        self.session(&mut input).await
    }

    fn events_open(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.events_open)
    }

    /// What the editor shows and completes.
    fn ready(&self) -> Ready {
        match &self.conn {
            Some(c) => {
                let mut routes: Vec<String> = c
                    .client
                    .handshake()
                    .sys
                    .iter()
                    .flat_map(|s| s.dict.keys().cloned())
                    .collect();
                routes.sort();
                Ready {
                    prompt: format!("{}> ", c.addr),
                    routes,
                }
            }
            None => Ready {
                prompt: "rookery> ".into(),
                routes: Vec::new(),
            },
        }
    }

    /// Reads lines and executes them, printing events as they arrive.
    async fn session(&mut self, input: &mut Input) -> Result<(), Error> {
        loop {
            input.ask(&self.out, || self.ready()).await;
            let step = tokio::select! {
                biased;
                event = next_event(&self.conn), if self.events_open() => Step::Event(event),
                line = input.next_line() => Step::Line(line),
            };
            let outcome = match step {
                Step::Event(Some(event)) => self.on_event(event).await,
                Step::Event(None) => self.connection_lost().await?,
                Step::Line(line) => {
                    let Some(line) = line? else { return Ok(()) };
                    match parse_line(&line) {
                        Err(e) => {
                            self.out.error(e).await;
                            Outcome::Continue
                        }
                        Ok(command) => match self.execute(command).await? {
                            Outcome::Continue if self.conn.is_some() && !self.events_open() => {
                                self.connection_lost().await?
                            }
                            outcome => outcome,
                        },
                    }
                }
            };
            if let Outcome::Done = outcome {
                return Ok(());
            }
        }
    }

    /// Prints an event; a kick ends the connection.
    async fn on_event(&mut self, event: Event) -> Outcome {
        match event {
            Event::Push(push) => {
                self.out.line(format_push(&push)).await;
                Outcome::Continue
            }
            Event::Kick { reason } => self.kicked(reason).await,
        }
    }

    /// The server kicked this client: the end of a script; on a terminal, disconnected.
    async fn kicked(&mut self, reason: Option<String>) -> Outcome {
        let reason = reason.as_deref().unwrap_or("(no reason)");
        self.out.line(format!("kicked: {reason}")).await;
        if !self.interactive {
            return Outcome::Done;
        }
        if let Some(conn) = self.conn.take() {
            conn.client.close().await;
        }
        Outcome::Continue
    }

    /// The server ended the connection without a kick: an error for a script; on a terminal,
    /// disconnected.
    async fn connection_lost(&mut self) -> Result<Outcome, Error> {
        let Some(conn) = self.conn.take() else {
            return Ok(Outcome::Continue);
        };
        let e = closed_error(&conn.client).await;
        if !self.interactive {
            return Err(e);
        }
        self.out.line(e.to_string()).await;
        Ok(Outcome::Continue)
    }

    /// `connect ADDR`: closes the current connection, if any, and opens one to `addr`.
    async fn connect(&mut self, addr: String) -> Result<Outcome, Error> {
        if let Some(old) = self.conn.take() {
            old.client.close().await;
            self.out
                .line(format!("disconnected from {}", old.addr))
                .await;
        }
        let client = match Client::connect(&addr, self.opts.clone()).await {
            Ok(c) => c,
            Err(e) => {
                let e = format!("cannot connect to {addr}: {e}");
                if !self.interactive {
                    return Err(e.into());
                }
                self.out.error(e).await;
                return Ok(Outcome::Continue);
            }
        };
        let (heartbeat, routes) = client
            .handshake()
            .sys
            .as_ref()
            .map_or((0, 0), |s| (s.heartbeat, s.dict.len()));
        self.out
            .line(format!(
                "connected to {addr} (serializer {}, heartbeat {heartbeat}s, {routes} routes)",
                client.serializer().as_str()
            ))
            .await;
        self.conn = Some(Conn {
            client,
            addr,
            events_open: true,
        });
        Ok(Outcome::Continue)
    }

    /// Executes one command; a request is awaited while pushes keep being printed.
    async fn execute(&mut self, command: Command) -> Result<Outcome, Error> {
        match command {
            Command::Empty => {}
            Command::Help => self.out.line(HELP.into()).await,
            Command::Quit => return Ok(Outcome::Done),
            Command::Connect { addr } => return self.connect(addr).await,
            Command::Disconnect => match self.conn.take() {
                Some(conn) => {
                    conn.client.close().await;
                    self.out
                        .line(format!("disconnected from {}", conn.addr))
                        .await;
                }
                None => self.out.error("not connected").await,
            },
            Command::Routes | Command::Request { .. } | Command::Notify { .. }
                if self.conn.is_none() =>
            {
                self.out.error("not connected (connect ADDR)").await;
            }
            Command::Routes => {
                let mut dict: Vec<(String, u16)> = self
                    .conn
                    .iter()
                    .flat_map(|c| c.client.handshake().sys.iter())
                    .flat_map(|s| s.dict.iter().map(|(k, v)| (k.clone(), *v)))
                    .collect();
                dict.sort();
                if dict.is_empty() {
                    self.out.line("(no routes in the dictionary)".into()).await;
                }
                for (route, code) in dict {
                    self.out.line(format!("{route} {code}")).await;
                }
            }
            Command::Notify { route, body } => {
                let payload = serde_json::to_vec(&body)?;
                let Some(conn) = self.conn.as_mut() else {
                    return Ok(Outcome::Continue);
                };
                if let Err(e) = conn.client.notify_raw(&route, payload.into()).await {
                    self.out.line(format_error(&route, &e)).await;
                    if matches!(e, ClientError::Closed { .. }) {
                        if let Some(reason) = drain_events(conn, &self.out).await {
                            return Ok(self.kicked(reason).await);
                        }
                    }
                }
            }
            Command::Request { route, body } => {
                let payload = serde_json::to_vec(&body)?;
                let Some(conn) = self.conn.as_mut() else {
                    return Ok(Outcome::Continue);
                };
                if let Some(reason) = request(conn, &self.out, &route, payload).await {
                    return Ok(self.kicked(reason).await);
                }
            }
        }
        Ok(Outcome::Continue)
    }
}

/// Sends a request and prints its answer, and the pushes that arrive meanwhile; `Some(reason)`
/// when the server kicked the client instead.
async fn request(
    conn: &mut Conn,
    out: &Out,
    route: &str,
    payload: Vec<u8>,
) -> Option<Option<String>> {
    /// How the wait for the answer ended.
    enum End {
        Answered,
        Closed,
        Kicked(Option<String>),
    }
    let mut events_open = conn.events_open;
    let end = {
        let client = &conn.client;
        let request = client.request_raw(route, payload.into());
        tokio::pin!(request);
        loop {
            tokio::select! {
                // Events first: a push the server sent before the response prints before it.
                biased;
                event = client.next_event(), if events_open => match event {
                    Some(Event::Push(push)) => out.line(format_push(&push)).await,
                    Some(Event::Kick { reason }) => break End::Kicked(reason),
                    None => events_open = false,
                },
                reply = &mut request => break match reply {
                    Ok(payload) => {
                        out.line(format!("< {route} {}", format_payload(&payload))).await;
                        End::Answered
                    }
                    Err(e) => {
                        out.line(format_error(route, &e)).await;
                        if matches!(e, ClientError::Closed { .. }) {
                            End::Closed
                        } else {
                            End::Answered
                        }
                    }
                },
            }
        }
    };
    conn.events_open = events_open;
    match end {
        End::Answered => None,
        End::Closed => drain_events(conn, out).await,
        End::Kicked(reason) => Some(reason),
    }
}

/// After the connection ended: prints the events still queued (the queue closes promptly);
/// `Some(reason)` for a kick among them.
async fn drain_events(conn: &mut Conn, out: &Out) -> Option<Option<String>> {
    while conn.events_open {
        match conn.client.next_event().await {
            Some(Event::Push(push)) => out.line(format_push(&push)).await,
            Some(Event::Kick { reason }) => return Some(reason),
            None => conn.events_open = false,
        }
    }
    None
}

/// `push ROUTE {json}`.
fn format_push(push: &Push) -> String {
    format!("push {} {}", push.route, format_payload(&push.payload))
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
    fn parses_connect_and_disconnect() {
        assert_eq!(
            parse_line("connect 127.0.0.1:3250"),
            Ok(Command::Connect {
                addr: "127.0.0.1:3250".into()
            })
        );
        assert_eq!(
            parse_line("  connect\tws://127.0.0.1:3251/  "),
            Ok(Command::Connect {
                addr: "ws://127.0.0.1:3251/".into()
            })
        );
        assert_eq!(parse_line("disconnect"), Ok(Command::Disconnect));
        assert_eq!(parse_line(" disconnect \n"), Ok(Command::Disconnect));
        assert!(parse_line("connect")
            .unwrap_err()
            .starts_with("usage: connect"));
        assert!(parse_line("connect a:1 b:2")
            .unwrap_err()
            .starts_with("usage: connect"));
        assert!(parse_line("disconnect now")
            .unwrap_err()
            .contains("takes no arguments"));
    }

    fn routes() -> Vec<String> {
        [
            "connector.entry.login",
            "room.room.join",
            "room.room.leave",
            "room.room.list",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn completes_commands() {
        let r = routes();
        assert_eq!(
            complete("", 0, &r),
            (0, COMMANDS.map(|c| format!("{c} ")).to_vec())
        );
        assert_eq!(complete("re", 2, &r), (0, vec!["request ".to_string()]));
        assert_eq!(
            complete("  r", 3, &r),
            (2, vec!["request ".to_string(), "routes ".to_string()])
        );
        assert_eq!(complete("di", 2, &r), (0, vec!["disconnect ".to_string()]));
        assert_eq!(complete("zz", 2, &r), (0, vec![]));
        // Only the word before the cursor counts.
        assert_eq!(
            complete("no room.room.list", 2, &r),
            (0, vec!["notify ".to_string()])
        );
    }

    #[test]
    fn completes_routes_of_requests_and_notifies() {
        let r = routes();
        assert_eq!(
            complete("request room.room.l", 19, &r),
            (
                8,
                vec![
                    "room.room.leave ".to_string(),
                    "room.room.list ".to_string()
                ]
            )
        );
        assert_eq!(
            complete("notify  conn", 12, &r),
            (8, vec!["connector.entry.login ".to_string()])
        );
        assert_eq!(complete("request ", 8, &r).1.len(), r.len());
        // Nothing else takes a route, and nothing follows the route.
        assert_eq!(complete("connect room", 12, &r), (8, vec![]));
        assert_eq!(complete("routes ro", 9, &r), (7, vec![]));
        assert_eq!(complete("request room.room.join {", 24, &r), (23, vec![]));
        // No dictionary (not connected): no routes.
        assert_eq!(complete("request ro", 10, &[]), (8, vec![]));
        // A cursor inside a multi-byte character or past the end completes nothing.
        assert_eq!(complete("é", 1, &r), (1, vec![]));
        assert_eq!(complete("re", 9, &r), (9, vec![]));
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
