//! Clean stops (docs/commands.md, "Clean stops"). SLURM sends SIGTERM at a job's time limit (and, with
//! `--signal`, a chosen signal some time before it); Ctrl-C sends SIGINT. Once [`install`]ed,
//! the first SIGTERM, SIGINT or SIGUSR1 is only recorded: training finishes the step under way
//! on every rank and writes a checkpoint, a map phase finishes the tasks under way, and the
//! stage ends with [`Stopped`] (exit code 3). A second signal ends the process at once
//! (exit code 128 + the signal, as the shell reports a killed process).

use std::sync::atomic::{AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The signals that ask for a clean stop.
pub const SIGNALS: [i32; 3] = [SIGTERM, SIGINT, SIGUSR1];

/// The first stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Makes the stop signals ask for a clean stop instead of ending the process.
pub fn install() -> std::io::Result<()> {
    for signal in SIGNALS {
        // SAFETY: the handler only swaps an atomic and calls `_exit`, both async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
                    signal_hook::low_level::exit(128 + signal);
                }
            })?;
        }
    }
    Ok(())
}

/// The stop signal received by this process, if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Records `signal` as if it had been received (tests of the stop paths).
pub fn request(signal: i32) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// `SIGTERM`, `SIGINT`, `SIGUSR1`, or the number.
pub fn signal_name(signal: i32) -> String {
    match signal {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGUSR1 => "SIGUSR1".into(),
        other => format!("signal {other}"),
    }
}

/// What this rank knows of the stop: the signal it received, or that another rank did.
pub fn cause() -> String {
    requested().map_or_else(|| "a stop signal on another rank".into(), |s| format!("{} on this rank", signal_name(s)))
}

/// A stage that stopped early, cleanly, because a stop signal arrived: what it kept, and how
/// to go on.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {cause}: {kept}")]
pub struct Stopped {
    pub cause: String,
    pub kept: String,
}
