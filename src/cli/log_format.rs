//! The daemon's log format: `tracing` lines on stderr, plain (with colours on a terminal) or,
//! when stderr is the journal, in journald's stream format with each line prefixed by its
//! syslog priority. Field values are escaped so no input can forge a log line.

use std::io::IsTerminal;

/// Plain lines on a terminal (with colours) or in a file; when stderr is the journal
/// (`JOURNAL_STREAM` names it), no timestamps and each line prefixed with its syslog priority,
/// which journald reads as the entry's level. `RUST_LOG` wins over `[daemon] log_level`.
/// A bare level in `log_level` is for our own messages; libraries stay at `warn` (sled's
/// debug output would bury ours), unless directives say otherwise.
pub fn init(config_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let config_level = config_level.map(|l| {
        let level = l.trim().to_ascii_lowercase();
        match level.as_str() {
            "trace" | "debug" | "info" | "warn" => format!("warn,visutility={level}"),
            "error" | "off" => level,
            _ => l.to_owned(),
        }
    });
    let config_level = config_level.as_deref();
    let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let (filter, bad_rust_log) = match rust_log.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, None),
        other => (
            EnvFilter::try_new(config_level.unwrap_or("info"))
                .unwrap_or_else(|_| EnvFilter::new("info")),
            other.and_then(|r| r.err()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(EscapedFields)
        .with_writer(std::io::stderr);
    if crate::systemd::stderr_is_journal() {
        builder.event_format(JournalFormat).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    if let Some(error) = bad_rust_log {
        tracing::warn!(error = %error, "ignoring RUST_LOG; using the configured log level");
    }
}

/// Field values as the default formatter writes them (`message` first, then `key=value`), but
/// with non-printable characters escaped: a model id, a hook's output line or an error text
/// can then never forge a log line, a journal priority or a terminal escape. Only the message
/// keeps its line breaks (the daemon's own multi-line messages; the journal format prefixes
/// each line).
struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use crate::escape::{escape, escape_except};
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let text = format!("{value:?}");
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", escape_except(&text, Some('\n')))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{sep}{name}={}", escape(&text))
        };
    }
}

/// journald's stream format: `<N>message` per line, N the syslog priority; no timestamp
/// (the journal keeps its own). A message with several lines gets the prefix on each, or
/// journald would file the rest at the default priority.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write as _;
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                line.push_str(span.name());
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(line, "{{{fields}}}")?;
                }
                line.push_str(": ");
            }
        }
        ctx.field_format().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        if line.is_empty() {
            return writeln!(writer, "<{priority}>");
        }
        for l in line.lines() {
            writeln!(writer, "<{priority}>{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_priority_on_every_line() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields)
            .event_format(JournalFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(model_id = "m1", "hook failed");
            tracing::warn!("careful");
            tracing::info!(job_id = 7, "job queued");
            tracing::debug!("two\nlines");
            tracing::trace!("fine");
            // Finding 6 of the security review: neither a field nor a hook's output line can
            // start a line of its own (at another priority) or reach the terminal raw.
            let id = "x\n<3>forged";
            tracing::info!(model_id = %id, "hook: a\u{1b}[2J\rb");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<3>hook failed model_id=\"m1\"\n<4>careful\n<6>job queued job_id=7\n<7>two\n<7>lines\n<7>fine\n\
             <6>hook: a\\x1b[2J\\rb model_id=x\\n<3>forged\n"
        );
    }
}
