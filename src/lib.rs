//! visutility watches machine-learning models in production and retrains them when they go bad.
//!
//! # Layout
//!
//! A map of the country, not an atlas:
//!
//! - [`cli`]: the command line. `main.rs` only dispatches; the clap definitions and what
//!   each command does are here: the operator commands over the control socket
//!   ([`cli::operator`]), the `push` client, `backtest` and `check-config`, tables and
//!   sparklines for people, and the daemon's log format ([`cli::log_format`], journald's).
//! - [`config`]: raw TOML is parsed and walked key by key (`config/raw.rs`), then validated
//!   into a [`config::Config`] (`validate.rs`); paths come from systemd's environment or the
//!   `directories` crate ([`config::Env`], `env.rs`), which also finds the sockets for the
//!   operator commands when the config does not validate.
//! - [`protocol`]: the ingest wire format (newline-delimited JSON) and its framing, nothing else.
//!   [`protocol::decode_line`] tries a fast scanner ([`protocol::scan`]) before the serde
//!   reference decoder ([`protocol::fallback`]); codes in [`protocol::error`], decoded lines
//!   and the id rules in [`protocol::event`], [`protocol::reply`], [`protocol::framing`].
//! - [`ingest`]: the Unix socket listener and one task per connection. Lines are decoded,
//!   grouped per model and sent to model actors in batches. A connection runs on the models'
//!   thread while it is light (its batches go straight into the actors' mailboxes, one thread
//!   woken per write) and moves to the main thread under a heavy load; its socket moves with
//!   it (`ingest::sock`).
//! - [`model`]: one supervised actor per `model_id`, wrapping the model's policy state (dropped
//!   from memory while the model is idle, loaded again from the store by its next event).
//!   What a batch makes it decide (one decision per action per batch, counts, when a policy
//!   starts and stops firing) is a plain struct, [`model::Decider`].
//! - [`policy`]: pure decision logic (thresholds, windows, streaming detectors in
//!   [`policy::detect`]).
//! - [`command`]: the hook runner: one actor that turns decisions into jobs and runs the
//!   operator's retrain scripts with timeouts, cooldowns and retries. Its rules are plain code
//!   with the time passed in: one decision's (pause, cooldown, loop guard, budget) in
//!   [`command::rules`], shared with `backtest --simulate`; the jobs around it (one per model,
//!   queue, retries, trigger limit) in [`command::scheduler`]; the hook's stdin typed in
//!   [`command::input`]; each model's decision log (what `explain` shows, coalesced against
//!   flash wear) in [`command::decision_log`]. It knows nothing of model actors: the daemon
//!   wires a callback for its news to a model ([`command::ModelNotice`]: a retrain succeeded,
//!   a rollback succeeded, an operator ended a probation) and the registry's models send it
//!   [`command::Decision`]s and probation verdicts, so the module graph has no cycle (`model`
//!   uses `command`, never the reverse).
//!   Receipts and rollbacks are in [`command::rollback`]; each retrain's probation record,
//!   the verdicts acted on once, and `promote` in `command::probation`.
//! - [`probation`]: the rule that judges a retrain by the metric after it (a group-sequential
//!   test with O'Brien-Fleming-type boundaries), a probation's state and a model's
//!   ([`probation::ModelProbation`]: the metric's recent values, the running probation), as
//!   plain code. The model watches the metric in [`model::advance`] (so the replay at load
//!   resumes a probation exactly) and reports verdicts from `model::verdicts`.
//! - [`clock`]: the wall clock (dates) and the boot clock (every duration), and the rule that
//!   a persisted deadline is clamped to its configured length at load.
//! - [`control`]: the operator's control socket behind `status`, `models`, `history`, ...
//!   Its requests and replies are one set of types ([`control::api`]) that the daemon
//!   serializes and the CLI reads back. Also the metrics ([`control::metrics`]) and their
//!   optional HTTP listener ([`control::http`], `[metrics] listen`).
//! - [`peer`]: who is on the other end of a Unix socket (SO_PEERCRED) and whether they may use
//!   it; shared by the ingest and control sockets.
//! - [`strict_modes`]: the ownership and mode checks on the config, the hooks and the state
//!   directory (sshd's StrictModes).
//! - [`store`]: the only module that knows sled and bincode; versioned records and migrations.
//!   A model's state is a checkpoint in sled plus the events logged since
//!   ([`store::wal`], the observation log), replayed through [`model::advance`] at load; one
//!   flusher thread does every fsync (group commit).
//! - [`daemon`]: wires the actors together, and reloads the config on SIGHUP.
//! - [`escape`]: non-printable characters made visible in every table and log line.
//! - [`shutdown`]: Unix signals mapped to a closed enum.
//! - [`systemd`]: readiness notification and socket activation.
//! - [`backtest`]: offline replay of recorded events through the same policy code; its
//!   [`backtest::report`] draws a replay as one self-contained HTML page (`--report`).
//!
//! # Dependencies and their audit
//!
//! `cargo audit` (RustSec advisory database) finds no crate with a known vulnerability. It
//! flags three as unmaintained: `bincode` 2.0.1 (RUSTSEC-2025-0141), a direct dependency, and
//! `fxhash` and `instant`, which come in through `sled` 0.34.7. Rerun it with
//! `cargo install cargo-audit --locked && cargo audit` (it reads `Cargo.lock`; `cargo audit
//! --deny unmaintained` makes the warnings errors).
//!
//! `bincode` encodes the store's records, behind `store` only (every stored value starts with a
//! version byte). It stays for now because it works, has no known flaw, and replacing
//! it changes the bytes on disk: that is a store migration, not a dependency bump. Its
//! replacement would be `postcard` (maintained, serde-based, a compact and documented stable
//! wire format, no_std-friendly), introduced as a new record version that old records are
//! migrated from, one migration file beside the others. `fxhash` and `instant` go with `sled`
//! itself, whose replacement is the larger question the `store` boundary is there for.
//!
//! # Architecture invariants
//!
//! - Only `store` touches sled and bincode.
//! - `policy` does no I/O and reads no clock (an event's time is in the event).
//! - `command::rules`, `command::scheduler`, `command::decision_log` and `model::decide` do
//!   no I/O and read no clock: time is their `now` argument.
//! - Each actor's messages are a closed set in one file (`messages.rs` beside it).
//! - The control socket speaks only [`control::api`]'s types, on both sides: no `json!`
//!   objects on one and string keys on the other.
//! - A hostile line can only ever produce an error reply for that line: decoding never panics,
//!   and a model's actor only ever sees that model's events.

pub mod backtest;
pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
pub mod control;
pub mod daemon;
pub mod escape;
pub mod ingest;
pub mod model;
pub mod peer;
pub mod policy;
pub mod probation;
pub mod protocol;
pub mod shutdown;
pub mod store;
pub mod strict_modes;
pub mod systemd;
pub mod timer;
