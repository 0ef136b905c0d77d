//! `steward doctor logs FILE`: the CLI reads the file; steward-doctor names the faults.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use steward_doctor::Severity;

use crate::cli::Format;

/// Agent logs roll daily; a month of a chatty agent stays well under this.
const MAX_LOG_BYTES: u64 = 256 * 1024 * 1024;

pub(crate) fn run(file: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", file.display());
    anyhow::ensure!(
        meta.len() <= MAX_LOG_BYTES,
        "{} is {} bytes; give one rolled file at a time",
        file.display(),
        meta.len()
    );
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // A log cut mid-write may end in a partial UTF-8 sequence: read what is readable.
    let text = String::from_utf8_lossy(&bytes);
    let findings = steward_doctor::logs::analyze(&text);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Format::Text => {
            println!("steward doctor logs — {}", file.display());
            if findings.is_empty() {
                println!("  no agent events found");
            }
            for f in &findings {
                let mark = match f.severity {
                    Severity::Ok => "  ok   ",
                    Severity::Warning => "  WARN ",
                    Severity::Error => "  ERROR",
                };
                println!("{mark} {}  {}", f.id, f.message);
                if let Some(r) = &f.remedy {
                    println!("         fix: {r}");
                }
            }
        }
    }
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok);
    Ok(if worst == Severity::Error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
