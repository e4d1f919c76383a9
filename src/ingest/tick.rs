//! The ingest tick: at low rates, connections that stream events are read together on a tick
//! shared by all of them (`[daemon] ingest_tick_ms`), instead of each write waking the models'
//! thread on its own.
//!
//! On a small host a wake-up of the models' thread costs far more than the events a paced
//! client sends in it (about 120 µs of CPU on this project's 2-core VM, against 0.6 µs an
//! event): a client writing every 10 ms cost the daemon 1.4% of a core at 1,000 events/s,
//! almost all of it wake-ups. A resting connection is off the reactor (its data does not wake
//! the thread) and is read at each tick; every resting connection shares the same tick
//! instants, so the thread wakes once a tick however many there are.
//!
//! Who rests: a connection on the models' thread whose read brought only events (no flush or
//! ping: a client that asked for something is answered and read again as soon as it writes)
//! and left nothing unfinished or unsent, at under [`TICK_MAX_EVENTS_PER_S`], and whose read
//! came within one tick of the models' thread's previous read (its own or another
//! connection's): only then would ticks be fewer wake-ups than writes. It keeps resting
//! while its ticks find data, and goes back to waking the thread on its data after
//! [`TICK_EMPTY_LIMIT`] empty ticks in a row, an op, an unfinished line, replies the socket
//! did not take, or a rate above the limit. None rests while any connection (on either
//! thread) is read at over the limit: the daemon is awake then anyway. The tick is one
//! `timerfd` per thread, closed once no connection uses it, so an idle daemon has none.
//!
//! The cost is latency at low rates only: an event of a resting connection waits for the next
//! tick (at most `ingest_tick_ms`) before it is applied, and so does a flush sent right after
//! such events.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::timer::Timer;

/// A connection sending more events per second than this is read as its data arrives, never
/// on the tick: its reads bring enough events that a wake-up costs little beside them, and a
/// heavy load keeps its latency.
pub const TICK_MAX_EVENTS_PER_S: f64 = 5_000.0;

/// Empty ticks in a row after which a resting connection is put back on the reactor (its data
/// wakes the thread again).
pub const TICK_EMPTY_LIMIT: u32 = 8;

/// Ticks in a row with no connection resting after which the ticker stops (its timer is
/// closed), so an idle daemon has none.
const TICKER_IDLE_LIMIT: u32 = 2;

/// How long a connection over [`TICK_MAX_EVENTS_PER_S`] keeps every connection from resting
/// after its last read (seconds).
const BUSY_HOLD_S: f64 = 1.0;

/// Until when (Unix milliseconds) the daemon counts as busy: a connection was read at over
/// [`TICK_MAX_EVENTS_PER_S`]. Then no connection rests: the daemon is awake most of the time
/// anyway, so a tick would save no wake-up and only delay the light connections' events (a
/// crossing sent beside a heavy stream is applied at once, as before).
static BUSY_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Time of receipt (Unix seconds) of the latest read of a connection on this thread.
    static LAST_READ: Cell<f64> = const { Cell::new(f64::NEG_INFINITY) };
    /// This thread's ticker, while one runs.
    static TICKER: RefCell<Option<Rc<Ticker>>> = const { RefCell::new(None) };
}

/// One thread's tick: a periodic [`Timer`] (a `timerfd`), so that every resting connection
/// wakes at the same instant, once. (tokio's own timers would not do: its wheel wakes the
/// thread a second time whenever a deadline lies past the current 64 ms block, at the block's
/// start, which a 25 ms tick does about 15 times a second.)
struct Ticker {
    every: Duration,
    tick: Notify,
    /// Connections waiting for the next tick.
    waiting: Cell<usize>,
    /// Set when the ticker has stopped: waiters return and the next starts a new one.
    stopped: Cell<bool>,
}

/// Errors of the tick's timer.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("cannot start the ingest tick's timer: {0}")]
    Timer(#[source] std::io::Error),
    #[error("the ingest tick's timer stopped")]
    Stopped,
}

/// Waits for the next tick of this thread's ticker, starting one (`every` apart) if none
/// runs. An error means no tick can be had: the caller waits for its data instead.
pub(super) async fn next(every: Duration) -> Result<(), TickError> {
    let ticker = ticker(every)?;
    ticker.waiting.set(ticker.waiting.get() + 1);
    struct Waiting<'a>(&'a Ticker);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.waiting.set(self.0.waiting.get() - 1);
        }
    }
    let _waiting = Waiting(&ticker);
    ticker.tick.notified().await;
    if ticker.stopped.get() {
        return Err(TickError::Stopped);
    }
    Ok(())
}

fn ticker(every: Duration) -> Result<Rc<Ticker>, TickError> {
    if let Some(t) = TICKER.with(|c| c.borrow().clone())
        && !t.stopped.get()
    {
        return Ok(t);
    }
    let timer = Timer::periodic(every).map_err(TickError::Timer)?;
    let t = Rc::new(Ticker {
        every,
        tick: Notify::new(),
        waiting: Cell::new(0),
        stopped: Cell::new(false),
    });
    TICKER.with(|c| *c.borrow_mut() = Some(t.clone()));
    actix::spawn(drive(t.clone(), timer));
    Ok(t)
}

/// Wakes the waiters at every expiry of the timer, until none waited for a while or the timer
/// fails.
async fn drive(t: Rc<Ticker>, timer: Timer) {
    let mut unused = 0;
    loop {
        if let Err(error) = timer.expired().await {
            tracing::warn!(error = %error, "the ingest tick's timer failed; connections are read as their data arrives");
            break;
        }
        if t.waiting.get() == 0 {
            unused += 1;
            if unused >= TICKER_IDLE_LIMIT {
                break;
            }
        } else {
            unused = 0;
        }
        t.tick.notify_waiters();
    }
    t.stopped.set(true);
    t.tick.notify_waiters();
    TICKER.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_some_and(|cur| Rc::ptr_eq(cur, &t)) {
            *c = None;
        }
    });
    tracing::trace!(every_ms = t.every.as_millis() as u64, "ingest tick stopped");
}

/// Records a read at `now` (Unix seconds) on this thread; returns the time of the one before
/// it, by any connection.
pub(super) fn note_read(now: f64) -> f64 {
    LAST_READ.with(|c| c.replace(now))
}

/// Records that a connection was read at over [`TICK_MAX_EVENTS_PER_S`] at `now` (Unix
/// seconds): no connection rests for the next [`BUSY_HOLD_S`].
pub(super) fn note_heavy(now: f64) {
    BUSY_UNTIL_MS.fetch_max(((now + BUSY_HOLD_S) * 1000.0) as u64, Ordering::Relaxed);
}

/// Whether a heavy connection was read lately (see [`note_heavy`]).
pub(super) fn busy(now: f64) -> bool {
    ((now * 1000.0) as u64) < BUSY_UNTIL_MS.load(Ordering::Relaxed)
}

/// Whether a connection rests after a read: `events` in it, `gap` seconds since its own read
/// before (the rate's span), `others_gap` since the thread's read before (anyone's); `resting`
/// says whether it rested before this read, `plain` whether the read left no op, unfinished
/// line or unsent reply, `busy` whether a heavy connection was read lately.
pub(super) fn rests(
    every: Duration,
    resting: bool,
    plain: bool,
    busy: bool,
    events: u64,
    gap: f64,
    others_gap: f64,
) -> bool {
    let tick = every.as_secs_f64();
    if !plain || busy || tick <= 0.0 || events == 0 {
        return false;
    }
    let rate = events as f64 / gap.max(tick);
    rate <= TICK_MAX_EVENTS_PER_S && (resting || others_gap < tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(25);

    #[test]
    fn a_heavy_read_keeps_everyone_awake_for_a_while() {
        let now = 2_000_000_000.0;
        assert!(!busy(now));
        note_heavy(now);
        assert!(busy(now + 0.5));
        assert!(!busy(now + BUSY_HOLD_S + 0.01));
    }

    #[test]
    fn who_rests() {
        // A paced client: 10 events every 10 ms (1,000/s) rests.
        assert!(rests(T, false, true, false, 10, 0.010, 0.010));
        // Writes further apart than a tick: the tick would not save wake-ups.
        assert!(!rests(T, false, true, false, 1, 0.100, 0.100));
        // ... unless another connection was read within the tick.
        assert!(rests(T, false, true, false, 1, 0.100, 0.001));
        // Once resting, it stays while its ticks bring data.
        assert!(rests(T, true, true, false, 25, 0.025, 0.025));
        // A heavy stream (20,000/s) is read as it comes.
        assert!(!rests(T, true, true, false, 500, 0.025, 0.025));
        // An op, an unfinished line or unsent replies end it; so does a tick of 0 (off).
        assert!(!rests(T, true, false, false, 10, 0.025, 0.025));
        assert!(!rests(Duration::ZERO, false, true, false, 10, 0.010, 0.010));
        // Beside a heavy connection nobody rests.
        assert!(!rests(T, true, true, true, 10, 0.010, 0.010));
        // A read with no events (bad lines only) does not rest.
        assert!(!rests(T, true, true, false, 0, 0.025, 0.025));
    }
}
