//! `modelgate watch`: load a policy set, reload it whenever its files change, and print
//! one line per reload or rejected reload.

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use modelgate::reload::{LiveEngine, ReloadEvent, WatchConfig};
use modelgate::EngineOptions;

use super::{exit, load_engine, print_diagnostics, Format, SourceArgs};

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Quiet period after the last file change before reloading, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub debounce_ms: u64,
    /// Scan the files at an interval instead of using file system events (for network
    /// mounts and container volumes that deliver no events)
    #[arg(long)]
    pub poll: bool,
    /// Time between two scans with `--poll`, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 2000, requires = "poll")]
    pub poll_interval_ms: u64,
}

pub fn run(args: &WatchArgs) -> u8 {
    let started = Instant::now();
    let engine = match load_engine(&args.sources, EngineOptions::default(), Format::Human) {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let status = engine.status();
    let mut out = io::stdout().lock();
    let loaded = writeln!(
        out,
        "loaded generation {}: {} policies, {} entities in {} ms",
        status.generation,
        status.policy_count,
        status.entity_count,
        started.elapsed().as_millis()
    );
    if loaded.and_then(|()| out.flush()).is_err() {
        return exit::ERROR;
    }

    let mut config = WatchConfig::default().with_debounce(Duration::from_millis(args.debounce_ms));
    if args.poll {
        config = config.polling(Duration::from_millis(args.poll_interval_ms));
    }
    let (sender, receiver) = mpsc::channel();
    let live = LiveEngine::start_with_observer(engine, config, move |event| {
        // The receiver lives until the process ends.
        let _ = sender.send(event.clone());
    });
    let live = match live {
        Ok(live) => live,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::ERROR;
        }
    };

    let mut rejected_before = false;
    for event in receiver {
        if print_event(&mut out, &event, rejected_before).is_err() {
            break;
        }
        rejected_before = matches!(event, ReloadEvent::Rejected { .. });
    }
    drop(live);
    exit::ERROR
}

fn print_event(out: &mut impl Write, event: &ReloadEvent, rejected_before: bool) -> io::Result<()> {
    match event {
        ReloadEvent::Reloaded(summary) => {
            print_diagnostics(&summary.warnings, Format::Human);
            let warnings = match summary.warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".to_string(),
                count => format!(", {count} warnings"),
            };
            writeln!(
                out,
                "reloaded generation {}: {} policies, {} entities in {} ms (changed: {}){warnings}",
                summary.generation,
                summary.policy_count,
                summary.entity_count,
                summary.duration.as_millis(),
                summary.changed.describe()
            )?;
        }
        ReloadEvent::Unchanged { generation, .. } => {
            if rejected_before {
                writeln!(
                    out,
                    "files match generation {generation} again; the reload error is cleared"
                )?;
            }
        }
        ReloadEvent::Superseded { .. } => {}
        ReloadEvent::Rejected {
            generation,
            error,
            duration,
        } => {
            print_diagnostics(error.diagnostics(), Format::Human);
            let mut errors = error.errors();
            let first = errors
                .next()
                .map_or_else(|| error.to_string(), ToString::to_string);
            let more = match errors.count() {
                0 => String::new(),
                1 => " (and 1 more error)".to_string(),
                count => format!(" (and {count} more errors)"),
            };
            writeln!(
                out,
                "rejected reload in {} ms, keeping generation {generation}: {first}{more}",
                duration.as_millis()
            )?;
        }
    }
    out.flush()
}
