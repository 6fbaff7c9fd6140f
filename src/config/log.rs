//! `[log]`: the level (an `EnvFilter` directive) and the format.

use super::{file, Errors};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

pub(super) fn build_log(l: file::Log, errs: &mut Errors) -> (Option<String>, Option<LogFormat>) {
    let level = l.level.unwrap_or_else(|| "info".to_string());
    let level = match tracing_subscriber::EnvFilter::try_new(&level) {
        Ok(_) => Some(level),
        Err(e) => {
            errs.push("log.level", format!("not a valid level or filter: {e}"));
            None
        }
    };
    let format = match l.format.as_deref() {
        None | Some("json") => Some(LogFormat::Json),
        Some("text") => Some(LogFormat::Text),
        Some(other) => {
            errs.push(
                "log.format",
                format!("must be \"json\" or \"text\", got {other:?}"),
            );
            None
        }
    };
    (level, format)
}
