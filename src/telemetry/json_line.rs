//! One log event as one line of JSON, written straight into the line.
//!
//! `tracing-subscriber`'s JSON format drives a `serde_json` serializer through
//! an adaptor that checks every piece it writes is UTF-8, and formats the
//! timestamp into a `String` of its own first. Under a burst of webhooks that
//! was 5% of the daemon's samples for a line a request logs. This format
//! writes the same keys (`instance_id` first when there is one, `timestamp`,
//! `level`, the event's fields in their order, `target`) into the one buffer
//! `tracing-subscriber` hands it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format, with the daemon's instance on every line if it has one.
pub(super) struct JsonLine {
    /// `"instance_id":"…",`, escaped once.
    instance_key: String,
}

impl JsonLine {
    pub(super) fn new(instance_id: Option<&str>) -> Self {
        let mut instance_key = String::new();
        if let Some(instance) = instance_id {
            instance_key.push_str("\"instance_id\":\"");
            push_escaped(&mut instance_key, instance);
            instance_key.push_str("\",");
        }
        Self { instance_key }
    }

    /// The line for `event`, without its newline: what [`FormatEvent`] writes.
    fn write(&self, out: &mut impl fmt::Write, event: &Event<'_>) -> fmt::Result {
        // A record from the `log` crate carries its real level and target as fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        out.write_char('{')?;
        out.write_str(&self.instance_key)?;
        out.write_str("\"timestamp\":\"")?;
        SystemTime.format_time(&mut Writer::new(out))?;
        out.write_str("\",\"level\":\"")?;
        out.write_str(meta.level().as_str())?;
        out.write_char('"')?;
        let mut fields = Fields {
            out,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        out.write_str(",\"target\":\"")?;
        Escaped(out).write_str(meta.target())?;
        out.write_str("\"}")
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        self.write(&mut writer, event)?;
        writer.write_char('\n')
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, W: fmt::Write> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        self.out.write_str(",\"")?;
        Escaped(&mut *self.out).write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.out.write_str("\":")
    }

    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.number(field, "null");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                self.out.write_char('"')?;
                Escaped(&mut *self.out).write_str(value)?;
                self.out.write_char('"')
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                self.out.write_char('"')?;
                write!(Escaped(&mut *self.out), "{value:?}")?;
                self.out.write_char('"')
            });
        }
    }
}

/// Writes what it is given as the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            // Only ASCII bytes are escaped, so `i` is a character boundary.
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

fn push_escaped(out: &mut String, s: &str) {
    // Writing into a String cannot fail.
    let _ = Escaped(out).write_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `log` writes through this format, as text and parsed.
    fn lines(instance: Option<&str>, log: impl FnOnce()) -> Vec<(String, Value)> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .event_format(JsonLine::new(instance))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("UTF-8");
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                let parsed = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                (line.to_owned(), parsed)
            })
            .collect()
    }

    /// Where each of `keys` starts in `line`, which must hold them in that order.
    fn assert_in_order(line: &str, keys: &[&str]) {
        let at: Vec<usize> = keys
            .iter()
            .map(|key| {
                line.find(&format!("\"{key}\":"))
                    .unwrap_or_else(|| panic!("no {key} in {line}"))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{keys:?} out of order in {line}"
        );
    }

    struct Shown;
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a \"quoted\"\tvalue\u{1}")
        }
    }

    #[test]
    fn a_line_has_the_instance_time_level_fields_in_order_and_target() {
        let lines = lines(Some("shop-1 \"a\""), || {
            tracing::warn!(
                order_id = %Shown,
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                nan = f64::NAN,
                ok = true,
                name = "Asha",
                reason = ?Some("x"),
                "stock {} low", "running"
            );
        });
        let [(text, line)] = lines.as_slice() else {
            panic!("{lines:?}")
        };
        assert!(text.starts_with("{\"instance_id\":"), "{text}");
        assert_in_order(
            text,
            &[
                "instance_id",
                "timestamp",
                "level",
                "message",
                "order_id",
                "count",
                "delta",
                "ratio",
                "nan",
                "ok",
                "name",
                "reason",
                "target",
            ],
        );
        assert!(
            text.ends_with(&format!("\"target\":\"{}\"}}", module_path!())),
            "{text}"
        );
        assert_eq!(line["instance_id"], "shop-1 \"a\"");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["order_id"], "a \"quoted\"\tvalue\u{1}");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["ok"], true);
        assert_eq!(line["name"], "Asha");
        assert_eq!(line["reason"], "Some(\"x\")");
        assert_eq!(line["message"], "stock running low");
        assert_eq!(line["target"], module_path!());
        let timestamp = line["timestamp"].as_str().expect("timestamp");
        assert!(
            timestamp.len() == "2026-12-07T19:00:00.123456Z".len() && timestamp.ends_with('Z'),
            "{timestamp}"
        );
    }

    #[test]
    fn without_an_instance_the_line_starts_with_its_time() {
        let lines = lines(None, || tracing::info!("started"));
        let (text, line) = &lines[0];
        assert!(text.starts_with("{\"timestamp\":\""), "{text}");
        assert_eq!(line["message"], "started");
    }

    proptest! {
        #[test]
        fn any_text_survives_the_escaping(text in any::<String>()) {
            let lines = lines(Some(&text), || tracing::info!(value = %text, "{text}"));
            prop_assert_eq!(lines.len(), 1);
            let line = &lines[0].1;
            prop_assert_eq!(line["instance_id"].as_str(), Some(text.as_str()));
            prop_assert_eq!(line["value"].as_str(), Some(text.as_str()));
            prop_assert_eq!(line["message"].as_str(), Some(text.as_str()));
        }
    }
}
