//! Unix signals mapped to a closed enum the daemon's main loop matches on.
//!
//! signal-hook's iterator runs on its own thread (signal handlers themselves only set flags),
//! and forwards each signal into the async world through a channel.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalTo {
    /// SIGTERM or SIGINT: stop accepting, drain, flush, exit 0.
    Shutdown(&'static str),
    /// SIGHUP: reload the config; an invalid one keeps the old.
    Reload,
}

/// Starts listening; the receiver yields one item per signal delivered.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<SignalTo>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let to = match sig {
                    SIGHUP => SignalTo::Reload,
                    SIGINT => SignalTo::Shutdown("SIGINT"),
                    _ => SignalTo::Shutdown("SIGTERM"),
                };
                if tx.send(to).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
