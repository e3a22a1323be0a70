//! Log lines: tracing-subscriber's fmt layer with the request in scope on every line.
//!
//! [`layer`] gives the fmt layer the `rookery` binary logs through: the same lines as
//! tracing-subscriber's default (`Full`) format, except that an event logged while a request is
//! handled carries the request's [`RequestScope`] where a span would be:
//! `2026-.. INFO request{route=room.room.echo trace_id=.. session=7}: my_game::room: joined`.
//! The scope is a task local the framework sets anyway; a `request` span at `info` carried the
//! same text before, but the fmt layer formats a span's fields when the span is created, whether
//! or not anything is logged in it, and that cost every request about a third of its
//! instructions in one process.
//!
//! [`PlainFields`] writes fields as `name=value` directly (tracing-subscriber's default field
//! formatter styles each field name through its ANSI painter even when colours are off).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::{RequestScope, TraceId, REQUEST_SPAN_TARGET};

/// The fmt layer with [`PlainFields`] and [`Lines`]: chain `.with_writer(..)`, `.with_ansi(..)`
/// as with `tracing_subscriber::fmt::layer()`.
pub fn layer<S>() -> tracing_subscriber::fmt::Layer<S, PlainFields, Lines>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(PlainFields)
        .event_format(Lines)
}

/// The event format of [`layer`]: tracing-subscriber's `Full` format (timestamp, level, spans,
/// target, fields) with the task's [`RequestScope`] written as the outermost span `request{..}`.
/// When a real `request` span is in the event's scope (`debug` on for
/// [`REQUEST_SPAN_TARGET`]), the span is written instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lines;

// The escape codes tracing-subscriber's painter writes.
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Writes `text` in `style` when the writer takes ANSI escapes.
fn paint(w: &mut Writer<'_>, style: &str, text: &str) -> fmt::Result {
    if w.has_ansi_escapes() {
        write!(w, "{style}{text}{RESET}")
    } else {
        w.write_str(text)
    }
}

/// Writes a span-like `name{fields}:`; without fields (None), `name:` as tracing-subscriber does.
fn write_span(w: &mut Writer<'_>, name: &str, fields: Option<&dyn fmt::Display>) -> fmt::Result {
    paint(w, BOLD, name)?;
    if let Some(fields) = fields {
        paint(w, BOLD, "{")?;
        write!(w, "{fields}")?;
        paint(w, BOLD, "}")?;
    }
    paint(w, DIM, ":")
}

/// The fields of a [`RequestScope`], as the `request` span writes them.
struct ScopeFields<'a>(&'a RequestScope);

impl fmt::Display for ScopeFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if let Some(route) = &s.route {
            write!(f, "route={route} ")?;
        }
        write!(f, "trace_id={}", TraceId(s.trace_id))?;
        if let Some(session) = s.session {
            write!(f, " session={session}")?;
        }
        Ok(())
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let ansi = w.has_ansi_escapes();

        if ansi {
            w.write_str(DIM)?;
        }
        if SystemTime.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        if ansi {
            w.write_str(RESET)?;
        }
        w.write_char(' ')?;

        let level = match *meta.level() {
            Level::TRACE => ("\x1b[35m", "TRACE"),
            Level::DEBUG => ("\x1b[34m", "DEBUG"),
            Level::INFO => ("\x1b[32m", " INFO"),
            Level::WARN => ("\x1b[33m", " WARN"),
            Level::ERROR => ("\x1b[31m", "ERROR"),
        };
        paint(&mut w, level.0, level.1)?;
        w.write_char(' ')?;

        let spans: Vec<_> = ctx
            .event_scope()
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let has_request_span = spans
            .iter()
            .any(|s| s.name() == "request" && s.metadata().target() == REQUEST_SPAN_TARGET);
        let mut seen = false;
        if !has_request_span {
            crate::telemetry::inspect_scope(|scope| match scope {
                Some(scope) => {
                    seen = true;
                    write_span(&mut w, "request", Some(&ScopeFields(scope)))
                }
                None => Ok(()),
            })?;
        }
        for span in &spans {
            seen = true;
            let ext = span.extensions();
            let fields = ext
                .get::<FormattedFields<N>>()
                .filter(|f| !f.is_empty())
                .map(|f| f as &dyn fmt::Display);
            write_span(&mut w, span.name(), fields)?;
        }
        if seen {
            w.write_char(' ')?;
        }

        paint(&mut w, DIM, meta.target())?;
        paint(&mut w, DIM, ":")?;
        w.write_char(' ')?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Formats fields as `name=value` separated by spaces; the `message` field as its text alone.
/// Fields that tracing-log adds to records of the `log` crate (`log.target`, ...) are left out,
/// as the default formatter does.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Staged on the stack and handed over in one piece: the fmt layer keeps a span's fields
        // in a `String` that would otherwise grow (and move) a few times per span.
        let mut staged = Staged {
            buf: [0; STAGE],
            len: 0,
            out: &mut writer,
        };
        let mut visitor = PlainVisitor {
            writer: &mut staged,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        staged.flush()
    }
}

const STAGE: usize = 256;

/// A write buffer on the stack in front of a [`Writer`].
struct Staged<'a, 'w> {
    buf: [u8; STAGE],
    len: usize,
    out: &'a mut Writer<'w>,
}

impl Staged<'_, '_> {
    fn flush(&mut self) -> fmt::Result {
        if self.len > 0 {
            // Only whole `str`s are copied in, so the bytes are UTF-8.
            let text = std::str::from_utf8(&self.buf[..self.len]).map_err(|_| fmt::Error)?;
            self.out.write_str(text)?;
            self.len = 0;
        }
        Ok(())
    }
}

impl fmt::Write for Staged<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > STAGE {
            self.flush()?;
            if s.len() > STAGE {
                return self.out.write_str(s);
            }
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// Writes one span's or event's fields (see [`PlainFields`]).
struct PlainVisitor<'a> {
    writer: &'a mut dyn fmt::Write,
    first: bool,
    result: fmt::Result,
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !self.first {
            if let Err(e) = self.writer.write_char(' ') {
                self.result = Err(e);
                return;
            }
        }
        self.first = false;
        if name != "message" {
            // Written directly; `write!` with the name as an argument costs more than the value.
            let name = name.strip_prefix("r#").unwrap_or(name);
            if let Err(e) = self
                .writer
                .write_str(name)
                .and_then(|()| self.writer.write_char('='))
            {
                self.result = Err(e);
                return;
            }
        }
        self.result = write!(self.writer, "{value:?}");
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, the event's fields (`message`
/// among them) and, while a request is handled, its `route`, `trace_id` and `session`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        use serde_json::Value;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut obj = serde_json::Map::new();
        obj.insert("timestamp".into(), Value::String(time));
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        crate::telemetry::inspect_scope(|scope| {
            if let Some(s) = scope {
                if let Some(route) = &s.route {
                    obj.insert("route".into(), route.to_string().into());
                }
                obj.insert("trace_id".into(), TraceId(s.trace_id).to_string().into());
                if let Some(session) = s.session {
                    obj.insert("session".into(), session.into());
                }
            }
        });
        event.record(&mut JsonVisitor(&mut obj));
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        w.write_str(&line)?;
        writeln!(w)
    }
}

/// Collects an event's fields into a JSON object (fields of `log` records' own left out).
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if !name.starts_with("log.") {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.0.insert(name.to_string(), value);
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// Keeps a log file's writer thread running: lines still queued are written when it is dropped,
/// so hold it until the process ends.
pub struct FileGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// A writer to the log file `cfg` describes, rotated as it says, and the guard that flushes it.
/// Lines are handed to a writer thread through a bounded queue (lines beyond it are dropped
/// rather than blocking a runtime thread on the disk).
pub fn file_writer(
    cfg: &crate::config::LogFileConfig,
) -> Result<(tracing_appender::non_blocking::NonBlocking, FileGuard), crate::config::ConfigError> {
    use crate::config::{ConfigError, ConfigErrorKind, LogRotation};
    use tracing_appender::rolling::{Builder, Rotation};
    let path = std::path::Path::new(&cfg.path);
    let failed = |what: &str, e: &dyn fmt::Display| {
        ConfigError::new(
            ConfigErrorKind::Invalid,
            format!("log.file.path {}: {what}: {e}", cfg.path),
        )
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| failed("cannot create its directory", &e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| failed("no file name", &"the path ends in a directory"))?;
    let keep = cfg.keep.max(1);
    let rotation = match cfg.rotation {
        LogRotation::Daily => Some(Rotation::DAILY),
        LogRotation::Hourly => Some(Rotation::HOURLY),
        LogRotation::Never => Some(Rotation::NEVER),
        LogRotation::Size => None,
    };
    let (writer, guard) = match rotation {
        Some(rotation) => {
            let appender = Builder::new()
                .rotation(rotation)
                .filename_prefix(name)
                .max_log_files(keep)
                .build(dir)
                .map_err(|e| failed("cannot open", &e))?;
            tracing_appender::non_blocking(appender)
        }
        None => {
            use file_rotate::{compression::Compression, suffix::AppendCount, ContentLimit};
            let bytes =
                usize::try_from(cfg.max_size_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
            // `FileRotate` opens the file lazily: check now that it can be, so that a bad path
            // is a start error and not lost lines.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| failed("cannot open", &e))?;
            let rotate = file_rotate::FileRotate::new(
                path,
                AppendCount::new(keep),
                ContentLimit::BytesSurpassed(bytes),
                Compression::None,
                None,
            );
            tracing_appender::non_blocking(rotate)
        }
    };
    Ok((writer, FileGuard(guard)))
}

/// Installs the process's log subscriber as `[log]` says: stderr and/or a rotated file, text or
/// JSON, filtered by `RUST_LOG` or else `cfg.level` or else `default_level`. `extra` is one more
/// layer (e.g. an OpenTelemetry exporter). Hold the returned guard until the process ends.
pub fn init(
    cfg: &crate::config::LogConfig,
    default_level: &str,
    extra: Option<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>,
    debug_requests: bool,
) -> Result<Option<FileGuard>, crate::config::ConfigError> {
    use crate::config::{ConfigError, ConfigErrorKind};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => cfg
            .level
            .clone()
            .unwrap_or_else(|| default_level.to_string()),
    };
    let mut filter = EnvFilter::try_new(&directives).map_err(|e| {
        ConfigError::new(
            ConfigErrorKind::Invalid,
            format!("log level {directives:?}: {e}"),
        )
    })?;
    if debug_requests {
        if let Ok(d) = format!("{REQUEST_SPAN_TARGET}=debug").parse() {
            filter = filter.add_directive(d);
        }
    }
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let mut layers: Vec<Boxed> = Vec::new();
    let json = cfg.format == crate::config::LogFormat::Json;
    if cfg.stderr {
        use std::io::IsTerminal;
        // Colours only on a terminal: pipes get plain text.
        let ansi = std::io::stderr().is_terminal();
        let l = layer().with_writer(std::io::stderr).with_ansi(ansi);
        layers.push(if json {
            l.with_ansi(false).event_format(JsonLines).boxed()
        } else {
            l.boxed()
        });
    }
    let mut guard = None;
    if let Some(file) = &cfg.file {
        let (writer, g) = file_writer(file)?;
        guard = Some(g);
        let l = layer().with_writer(writer).with_ansi(false);
        layers.push(if json {
            l.event_format(JsonLines).boxed()
        } else {
            l.boxed()
        });
    }
    layers.extend(extra);
    let _ = tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init();
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs through [`layer`] (when `ours`) or tracing-subscriber's default
    /// layer, without their timestamps (everything up to the first space).
    fn run(ours: bool, ansi: bool, f: &dyn Fn()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let writer = move || out.clone();
        let registry = tracing_subscriber::registry();
        if ours {
            let s = registry.with(layer().with_writer(writer).with_ansi(ansi));
            tracing::subscriber::with_default(s, f);
        } else if ansi {
            // With colours the default field formatter styles field names; `PlainFields` does
            // not (by design), so the event format is compared with the same field formatter.
            let s = registry.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(true)
                    .fmt_fields(PlainFields),
            );
            tracing::subscriber::with_default(s, f);
        } else {
            let s = registry.with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false),
            );
            tracing::subscriber::with_default(s, f);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| format!("{}\n", l.split_once(' ').expect("a timestamp").1))
            .collect()
    }

    /// Runs `f` in `scope` (a task local; the future is ready at once).
    fn in_scope(scope: &RequestScope, f: impl FnOnce()) {
        crate::telemetry::with_scope(scope.clone(), async { f() })
            .now_or_never()
            .expect("ready");
    }

    /// The lines `f` logs through [`layer`] and through the default layer, with and without
    /// colours.
    fn logged(f: impl Fn()) -> (String, String) {
        for ansi in [true, false] {
            let (ours, default) = (run(true, ansi, &f), run(false, ansi, &f));
            if ansi {
                assert_eq!(ours, default, "with colours");
                assert!(ours.contains("\x1b[32m INFO\x1b[0m"), "{ours:?}");
            } else {
                return (ours, default);
            }
        }
        unreachable!()
    }

    #[test]
    fn writes_what_the_default_formatter_writes() {
        let (plain, default) = logged(|| {
            let span = tracing::info_span!(
                "request",
                route = %"room.room.echo",
                trace_id = %"00ab",
                session = 7u64,
            );
            let _in = span.enter();
            tracing::info!(uid = "u1", ok = true, r#type = 3, "handler ran: {}", 42);
            let inner = tracing::warn_span!("inner");
            let _in = inner.enter();
            tracing::warn!("only a message");
        });
        assert_eq!(plain, default);
        assert!(
            plain.contains(
                "request{route=room.room.echo trace_id=00ab session=7}: \
                 rookery::logs::tests: handler ran: 42 uid=\"u1\" ok=true type=3"
            ),
            "{plain}"
        );
        assert!(
            plain.contains("request{route=room.room.echo trace_id=00ab session=7}:inner: "),
            "{plain}"
        );
    }

    #[test]
    fn a_request_scope_reads_as_the_request_span_did() {
        let scope = RequestScope {
            trace_id: 0xab,
            route: Some("room.room.echo".into()),
            session: Some(7),
        };
        let log = || tracing::info!(uid = "u1", "handler ran");
        let ours = run(true, false, &|| {
            in_scope(&scope, log);
            log();
        });
        let spanned = run(false, false, &|| {
            let span = tracing::info_span!(
                "request",
                route = %"room.room.echo",
                trace_id = %TraceId(0xab),
                session = 7u64,
            );
            span.in_scope(log);
            log();
        });
        assert_eq!(ours, spanned);
        let mut lines = ours.lines();
        assert_eq!(
            lines.next(),
            Some(
                " INFO request{route=room.room.echo trace_id=00000000000000ab session=7}: \
                 rookery::logs::tests: handler ran uid=\"u1\""
            )
        );
        // Outside the scope: no request.
        assert_eq!(
            lines.next(),
            Some(" INFO rookery::logs::tests: handler ran uid=\"u1\"")
        );
    }

    #[test]
    fn the_real_request_span_is_written_once() {
        let scope = RequestScope {
            trace_id: 1,
            route: Some("a.b.c".into()),
            session: Some(2),
        };
        let ours = run(true, false, &|| {
            let span = tracing::info_span!(target: REQUEST_SPAN_TARGET, "request", x = 1);
            let _in = span.enter();
            in_scope(&scope, || tracing::info!("m"));
        });
        assert_eq!(ours, " INFO request{x=1}: rookery::logs::tests: m\n");
        // A trace id alone (a gateway forwarding a request).
        let trace_only = RequestScope {
            trace_id: 1,
            route: None,
            session: None,
        };
        let ours = run(true, false, &|| {
            in_scope(&trace_only, || tracing::info!("m"))
        });
        assert_eq!(
            ours,
            " INFO request{trace_id=0000000000000001}: rookery::logs::tests: m\n"
        );
    }

    #[test]
    fn fields_longer_than_the_stage_are_written_whole() {
        let long = "x".repeat(3 * STAGE + 7);
        let (plain, default) = logged(|| {
            let span = tracing::info_span!("s", a = %"ä".repeat(STAGE / 2 - 3), b = %long);
            let _in = span.enter();
            tracing::info!(c = %long, "m");
        });
        assert_eq!(plain, default);
        assert!(plain.contains(&format!("b={long}}}")), "{plain}");
    }

    #[test]
    fn leaves_out_the_fields_of_log_records() {
        let (plain, _) = logged(|| {
            tracing::info!(log.target = "dep", log.line = 3u64, "from the log crate");
        });
        assert!(plain.contains(": from the log crate\n"), "{plain}");
        assert!(!plain.contains("log."), "{plain}");
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rookery-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn file_cfg(
        dir: &std::path::Path,
        rotation: crate::config::LogRotation,
    ) -> crate::config::LogFileConfig {
        crate::config::LogFileConfig {
            path: dir.join("game.log").to_string_lossy().into_owned(),
            rotation,
            max_size_mb: 1,
            keep: 2,
        }
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A size-rotated file in JSON: rotated at its size, only `keep` old files kept, and every
    /// line (the last one included) written whole once the guard is dropped.
    #[test]
    fn size_rotation_keeps_the_newest_files_and_loses_no_line() {
        let dir = scratch_dir("size");
        let (writer, guard) =
            file_writer(&file_cfg(&dir, crate::config::LogRotation::Size)).unwrap();
        let sub = tracing_subscriber::registry().with(
            layer()
                .with_writer(writer)
                .with_ansi(false)
                .event_format(JsonLines),
        );
        let padding = "x".repeat(1000);
        let lines = 4000u64; // about 4 MiB: four rotations at 1 MiB
        tracing::subscriber::with_default(sub, || {
            for n in 0..lines {
                tracing::info!(n, padding = %padding, "line");
            }
        });
        drop(guard);
        assert_eq!(files(&dir), ["game.log", "game.log.1", "game.log.2"]);
        for f in ["game.log.1", "game.log.2"] {
            let len = std::fs::metadata(dir.join(f)).unwrap().len();
            assert!(
                (1 << 20..(1 << 20) + 2048).contains(&len),
                "{f}: {len} bytes"
            );
        }
        let current = std::fs::read_to_string(dir.join("game.log")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(current.lines().last().expect("a line")).unwrap();
        assert_eq!(last["n"], lines - 1);
        assert_eq!(last["level"], "INFO");
        assert_eq!(last["message"], "line");
        assert_eq!(last["target"], module_path!());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A daily file carries its date; a JSON line logged in a request carries the request.
    #[test]
    fn daily_files_are_dated_and_json_lines_carry_the_request() {
        let dir = scratch_dir("daily");
        let (writer, guard) =
            file_writer(&file_cfg(&dir, crate::config::LogRotation::Daily)).unwrap();
        let sub = tracing_subscriber::registry().with(
            layer()
                .with_writer(writer)
                .with_ansi(false)
                .event_format(JsonLines),
        );
        let scope = RequestScope {
            trace_id: 0xabc,
            route: Some(Arc::from("room.room.join")),
            session: Some(7),
        };
        tracing::subscriber::with_default(sub, || {
            crate::telemetry::with_scope(scope, async { tracing::warn!(uid = "ann", "joined") })
                .now_or_never()
                .expect("ready");
        });
        drop(guard);
        let names = files(&dir);
        assert_eq!(names.len(), 1, "{names:?}");
        let today = time_today();
        assert_eq!(names[0], format!("game.log.{today}"));
        let text = std::fs::read_to_string(dir.join(&names[0])).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["route"], "room.room.join");
        assert_eq!(line["session"], 7);
        assert_eq!(line["uid"], "ann");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["trace_id"], TraceId(0xabc).to_string());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Today's date (UTC, as tracing-appender names its files), `YYYY-MM-DD`.
    fn time_today() -> String {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    }

    #[test]
    fn a_log_file_that_cannot_be_opened_is_a_clear_error() {
        let dir = scratch_dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        // A directory where the file should be.
        std::fs::create_dir_all(dir.join("game.log")).unwrap();
        let err = file_writer(&file_cfg(&dir, crate::config::LogRotation::Size))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("game.log"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
