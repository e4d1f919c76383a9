//! The crash loop: an event acknowledged by a flush is never lost, whatever happens to the
//! process.
//!
//! Every round starts the daemon, lets several clients push batches of random sizes to several
//! models (most batches followed by a flush whose acknowledgement is counted), SIGKILLs the
//! daemon at a random moment, and restarts it. After every restart, for every model the
//! persisted `events` must be at least what was acknowledged and at most what was sent, and
//! never less than after the previous restart (what a restart read back was on disk).
//!
//! The randomness is seeded and the seed printed; `VISUTILITY_CRASH_SEED=<n>` replays a run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const ROUNDS: usize = 40;
const CLIENTS: usize = 3;
const MODELS: [&str; 4] = ["crash-a", "crash-b", "team/crash:c", "crash.d"];

/// SplitMix64: small, seedable, good enough to pick sizes and moments.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// The seed: `VISUTILITY_CRASH_SEED` if set, else the clock.
pub fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Per model: events sent (an upper bound: a batch counts as sent before it is written) and
/// events acknowledged by an ok flush.
#[derive(Default)]
struct Ledger {
    sent: [AtomicU64; MODELS.len()],
    acked: [AtomicU64; MODELS.len()],
    flushes_ok: AtomicU64,
    flushes_failed: AtomicU64,
}

/// One client: batches and flushes until the daemon dies under it or `stop` is set.
fn client(socket: std::path::PathBuf, seed: u64, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut rng = SplitMix64::new(seed);
    let Ok(stream) = UnixStream::connect(&socket) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut unacked = [0u64; MODELS.len()];
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let n = rng.range(1, 150);
        let mut buf = Vec::new();
        for _ in 0..n {
            let m = rng.range(0, MODELS.len() as u64) as usize;
            seq += 1;
            buf.extend_from_slice(
                json!({"model_id": MODELS[m], "value": seq as f64, "drift_score": 0.01})
                    .to_string()
                    .as_bytes(),
            );
            buf.push(b'\n');
            unacked[m] += 1;
            ledger.sent[m].fetch_add(1, Ordering::SeqCst);
        }
        let flush = rng.range(0, 10) < 7;
        if flush {
            buf.extend_from_slice(b"{\"op\":\"flush\"}\n");
        }
        if w.write_all(&buf).is_err() {
            return;
        }
        if !flush {
            continue;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("unreadable reply {line:?}: {e}"));
        assert!(v.get("line").is_none(), "a valid event was rejected: {v}");
        if v["ok"] == json!(true) {
            for (m, u) in unacked.iter_mut().enumerate() {
                ledger.acked[m].fetch_add(*u, Ordering::SeqCst);
                *u = 0;
            }
            ledger.flushes_ok.fetch_add(1, Ordering::SeqCst);
        } else {
            ledger.flushes_failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn acknowledged_events_survive_a_sigkill_loop() {
    let seed = seed("VISUTILITY_CRASH_SEED");
    eprintln!("crash: seed {seed} (replay with VISUTILITY_CRASH_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let started = Instant::now();
    let ledger = Arc::new(Ledger::default());
    let mut d = Daemon::builder()
        .daemon_keys("flush_interval_ms = 50")
        .start();
    let mut last = [0u64; MODELS.len()];
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let go = Arc::new(Barrier::new(CLIENTS + 1));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (socket, ledger, stop, go) =
                    (d.socket.clone(), ledger.clone(), stop.clone(), go.clone());
                let s = rng.next_u64();
                thread::spawn(move || {
                    go.wait();
                    client(socket, s, ledger, stop)
                })
            })
            .collect();
        go.wait();
        thread::sleep(Duration::from_millis(rng.range(1, 400)));
        d.kill();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("a client thread panicked");
        }
        d.restart();

        let models = d.models_json();
        for (m, id) in MODELS.iter().enumerate() {
            let events = models
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["model_id"] == *id)
                .and_then(|v| v["events"].as_u64())
                .unwrap_or(0);
            let acked = ledger.acked[m].load(Ordering::SeqCst);
            let sent = ledger.sent[m].load(Ordering::SeqCst);
            if events < acked || events > sent || events < last[m] {
                d.fail(format!(
                    "round {round} (seed {seed}): model {id} has {events} events persisted; acknowledged {acked}, sent {sent}, after the previous restart {}",
                    last[m]
                ));
            }
            last[m] = events;
        }
    }
    let acked: u64 = ledger.acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    let sent: u64 = ledger.sent.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    let persisted: u64 = last.iter().sum();
    eprintln!(
        "crash: {ROUNDS} SIGKILL rounds survived in {:.1} s; {sent} events sent, {acked} acknowledged by {} ok flushes, {persisted} persisted; {} failed flushes",
        started.elapsed().as_secs_f64(),
        ledger.flushes_ok.load(Ordering::SeqCst),
        ledger.flushes_failed.load(Ordering::SeqCst),
    );
    assert_eq!(
        ledger.flushes_failed.load(Ordering::SeqCst),
        0,
        "a flush failed on a healthy disk"
    );
    assert!(
        acked > 0,
        "no flush was ever acknowledged: the loop tested nothing"
    );
}
