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
}
