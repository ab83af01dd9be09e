//! JSON Lines output: one JSON object per event, with an `event` field naming its kind.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::testing::report::Reporter;
use crate::testing::runner::Event;

/// Writes one line of JSON per event.
#[derive(Debug)]
pub struct JsonReporter<W: Write> {
    out: W,
}

impl<W: Write> JsonReporter<W> {
    /// Creates a reporter writing to `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for JsonReporter<W> {
    fn report(&mut self, event: &Event<'_>) -> io::Result<()> {
        let (kind, body) = match event {
            Event::RunStarted(started) => ("run_started", serde_json::to_value(started)),
            Event::FileError(diagnostic) => ("file_error", serde_json::to_value(diagnostic)),
            Event::CaseFinished(result) => {
                let value = serde_json::to_value(result).map(|mut value| {
                    if let Some(object) = value.as_object_mut() {
                        object.insert(
                            "duration_ms".to_string(),
                            json!(result.duration.as_secs_f64() * 1000.0),
                        );
                    }
                    value
                });
                ("case_finished", value)
            }
            Event::RunFinished(summary) => {
                let value = serde_json::to_value(summary).map(|mut value| {
                    if let Some(object) = value.as_object_mut() {
                        object.insert("summary".to_string(), json!(summary.line()));
                        object.insert("verdict".to_string(), json!(summary.verdict()));
                        object.insert(
                            "duration_ms".to_string(),
                            json!(summary.duration.as_secs_f64() * 1000.0),
                        );
                    }
                    value
                });
                ("run_finished", value)
            }
        };
        let mut body = body.map_err(io::Error::other)?;
        let mut line = serde_json::Map::new();
        line.insert("event".to_string(), Value::String(kind.to_string()));
        if let Some(object) = body.as_object_mut() {
            line.append(object);
        }
        serde_json::to_writer(&mut self.out, &Value::Object(line)).map_err(io::Error::other)?;
        writeln!(self.out)
    }
}
