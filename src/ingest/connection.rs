//! One ingest connection: read frames, decode lines, group events per model, send batches to
//! model actors, answer errors and flush barriers.
//!
//! Batching: decoded events collect in one array until nothing more is readable without
//! waiting, [`DISPATCH_EVENTS`] are pending, the oldest has waited [`DISPATCH_DELAY_S`], or an
//! op arrives. Then the array is sorted by
//! model (stably, so each model's events keep their order) and shared: each model gets one
//! `ApplyBatch` naming its range of it, however many events each model got. A connection
//! runs on the models' thread while its rate is low or moderate (then every message goes
//! straight into its actor's mailbox, and a client's write wakes one thread, not two) and on
//! the main thread beside the models under a heavy load (see `Home`). There, for a few
//! models the messages go as one task handed to the models' thread (one wake-up of it,
//! however many models), for one model or very many they are sent from the connection's
//! thread. The array comes back to the connection when the last model is done with it and is
//! reused. Order per model is preserved because the models' thread runs its tasks in order, a
//! direct send is taken only while none of the connection's tasks waits, an actor's mailbox
//! is FIFO, and dispatches leave in read order.
//!
//! At low rates a connection on the models' thread that streams events (no op in its reads)
//! rests: it is taken off the reactor and read at each tick of the thread's ingest tick,
//! together with every other resting connection, so its writes do not wake the thread one by
//! one (see [`tick`]).
//!
//! Backpressure: at most [`MAX_IN_FLIGHT`] dispatches of a connection are being applied at a
//! time; beyond that the connection stops reading until the models catch up, so a client that
//! sends faster than the models apply is slowed down (its writes block) instead of the daemon
//! queueing its events without bound.
//!
//! The flush barrier: pending events are dispatched, then every model this connection touched
//! since its last barrier is asked for a `Barrier` (all at once; each is answered after all
//! earlier batches are applied and the state is written to the store), then the store is
//! flushed (fsync). Only then is `{"ok": true, ...}` written.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::registry::{ModelHandle, RegistryError};
use crate::model::{ApplyBatch, Barrier, EventArray};
use crate::policy::Obs;
use crate::protocol::{self, ErrorCode, Frame, Line, LineReader, Op};

use super::IngestCtx;
pub use super::budget::ByteBudget;
use super::budget::Share;
use super::ids::IdKey;
use super::sock::{Sock, SockRead, SockState, SockWrite, attach_or_log, detach, rest};
use super::tick;

mod dispatch;

/// Most events decoded before they are sent, even while the socket has more: bounds the
/// memory held per connection, and is large enough that under load each of a thousand models
/// gets several events per message (a message costs about as much as applying four events).
pub const DISPATCH_EVENTS: usize = 8192;

/// Longest an event waits for the ones read after it before its batch is sent, checked at
/// each read (so exceeded by at most one read's decoding, a fraction of a millisecond).
pub const DISPATCH_DELAY_S: f64 = 0.002;

/// Dispatches of one connection that models may still be applying. At the limit, the
/// connection waits for the oldest to be done before it reads on: the models set the pace
/// (the client's writes block once the socket buffer is full) and the events queued in
/// mailboxes stay bounded, instead of growing without limit while models fall behind.
pub const MAX_IN_FLIGHT: usize = 4;

/// A dispatch to more models than this sends their batches from the connection's thread
/// rather than as one task on the models' thread (see `Conn::dispatch`).
pub const FANOUT_MAX_MODELS: usize = 64;

/// Returned dispatch arrays a connection keeps for reuse, so that under load it never
/// allocates (and page-faults in) a fresh one.
const SPARE_ARRAYS: usize = 2;

/// Events a connection keeps room for while it is idle; the batch buffers beyond this are
/// released when nothing is readable, so an idle connection holds little memory.
const IDLE_EVENTS: usize = 64;

/// How long a quiet connection keeps its batch buffers.
const BATCH_MEMORY_KEEP: Duration = Duration::from_secs(1);

/// Error reply bytes kept for a client that is not reading them (beyond what the kernel's
/// socket buffer holds); beyond this, or beyond [`REPLY_BUDGET`] for all connections together,
/// they are dropped (and counted) so that ingestion never waits for the client to read. A
/// client that writes a batch and then reads gets every reply of about 10,000 bad lines.
pub const REPLY_BUFFER: usize = 1 << 20;

/// Unsent reply bytes all connections together may queue.
pub const REPLY_BUDGET: usize = 16 << 20;

/// Flush and ping replies a client asked for and does not read: past this the connection
/// waits for it (it stops being read) instead of queueing without bound.
const REPLY_HARD_CAP: usize = 1 << 20;

/// How long the last replies of a closing connection may wait for the client to read them.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection needs from the config; reloads update it through a watch channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnSettings {
    pub max_line_bytes: usize,
    pub idle_timeout: Option<Duration>,
    /// `daemon.partial_line_timeout_s`: longest a line may stay unfinished (`None`: no limit).
    pub partial_line_timeout: Option<Duration>,
    /// `daemon.ingest_tick_ms`: the tick a light, streaming connection is read on (`None`:
    /// every write is read as it arrives); see [`tick`].
    pub tick: Option<Duration>,
}

/// How far ahead of the time of receipt an event's `ts` may be (clock skew); beyond it the
/// line is `bad_field` (a `ts` in milliseconds is the usual cause).
pub const MAX_TS_AHEAD_S: f64 = 86_400.0;

/// A model this connection has sent to.
struct Slot {
    handle: ModelHandle,
    /// The model's restart epoch when this connection first sent to it since its last
    /// barrier; `None` while untouched since then.
    touched: Option<u64>,
    /// Scratch for the dispatch's counting sort: this model's events in `pending`, then the
    /// start of its range.
    count: u32,
}

struct Conn {
    ctx: IngestCtx,
    line_no: u64,
    accepted: u64,
    rejected: u64,
    /// Every model this connection has sent to; indices are stable for its life.
    slots: Vec<Slot>,
    /// Model id to slot: this connection's view of the registry, so the hot path takes no
    /// lock and hashes each event's model id once. The hash is Fx (a multiply per 8 bytes, no
    /// per-process key) rather than SipHash, as flooding is no concern here: the map only ever
    /// holds ids this connection sent and the registry accepted (at most `max_models`), so a
    /// client that crafts colliding ids slows only its own connection, by at most that many
    /// probes per event.
    index: FxHashMap<IdKey, u32>,
    /// Events decoded and not yet sent, with their slot, in arrival order.
    pending: Vec<(u32, Obs)>,
    /// Arrays of earlier dispatches, back from the models, for reuse.
    spare: Vec<Vec<Obs>>,
    /// Where the models send dispatch arrays back once done with them.
    home: mpsc::UnboundedSender<Vec<Obs>>,
    returned: mpsc::UnboundedReceiver<Vec<Obs>>,
    /// Dispatches whose array has not come back yet.
    in_flight: usize,
    /// Dispatches handed to the models' thread as a task that has not run yet (see
    /// `dispatch`).
    fanouts: Arc<AtomicUsize>,
    /// Slots with events in `pending`, in first-seen order (dispatch scratch).
    active: Vec<u32>,
    /// Slots touched since the last barrier.
    touched: Vec<u32>,
    /// Reply lines not yet written; `replies[..sent]` is already on the socket.
    replies: Vec<u8>,
    sent: usize,
    /// Error replies not queued because the client was not reading ([`REPLY_BUFFER`]).
    replies_dropped: u64,
    /// This connection's unfinished line, counted against the budget of all connections.
    partial: Share,
    /// This connection's unsent replies, counted against [`REPLY_BUDGET`].
    queued: Share,
    /// Time of receipt of the current read (Unix seconds).
    now: f64,
    /// `now` when the oldest event in `pending` was read.
    first_pending: f64,
    /// Dispatches and messages sent, for the log line at close (batching at a glance).
    dispatches: u64,
    messages: u64,
    /// Whether this connection runs on the models' thread now (see `Home`).
    on_models: bool,
    /// Events accepted since `rate_since` (Unix seconds): the rate that picks the thread.
    rate_since: f64,
    rate_events: u64,
    /// A dispatch since the last move held at least [`BULK_EVENTS`]: a bulk load.
    bulk: bool,
    /// `now` at the last read before the latest dispatch.
    last_read: f64,
}

/// A read this soon after the one before the last dispatch (seconds) marks a client writing
/// back to back.
const BUSY_GAP_S: f64 = 0.002;

/// Which thread a connection runs on. A connection starts on the models' thread (where the
/// listener accepts it): at a low or moderate rate its reads, decoding and dispatch cost
/// little there, and its events reach the models without waking a second thread (a paced
/// load's every write would otherwise wake two threads: the connection's, then the
/// models'). Once it sends more than [`HEAVY_EVENTS_PER_S`] (or one dispatch holds
/// [`BULK_EVENTS`]) it moves to the main thread, so that decoding runs beside the models
/// instead of taking their time; below [`LIGHT_EVENTS_PER_S`] for a whole second it moves
/// back. A move happens between two dispatches, with nothing pending, and keeps every
/// model's order: on the models' thread every batch goes straight into its actor's mailbox
/// before the connection reads on, and the connection resumes there as a task queued behind
/// any batches it handed over from the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Models,
    Main,
}

/// Events per second past which a connection on the models' thread moves to the main thread.
pub const HEAVY_EVENTS_PER_S: u64 = 50_000;

/// A dispatch of this many events (the socket held them all at once) moves a connection on
/// the models' thread to the main thread at once, without waiting for the rate.
pub const BULK_EVENTS: usize = DISPATCH_EVENTS / 2;

/// Events per second (over a whole second) below which a connection on the main thread moves
/// back to the models' thread.
pub const LIGHT_EVENTS_PER_S: u64 = 10_000;

/// A connection between two stretches on one thread: everything it holds.
struct Parts {
    conn: Conn,
    reader: LineReader<SockRead>,
    wr: SockWrite,
    settings: ConnSettings,
    partial_since: Option<Instant>,
}

/// Serves one connection until it closes, on the models' thread or the main thread (see
/// `Home`). Called on the models' thread.
pub async fn run(stream: UnixStream, ctx: &IngestCtx) {
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let settings = ctx.settings.borrow().clone();
    let sock: Sock = Arc::new(std::sync::Mutex::new(SockState::Detached(std_stream)));
    let reader = LineReader::new(SockRead(sock.clone()), settings.max_line_bytes);
    let wr = SockWrite(sock);
    let (home, returned) = mpsc::unbounded_channel();
    let conn = Conn {
        ctx: ctx.clone(),
        line_no: 0,
        accepted: 0,
        rejected: 0,
        slots: Vec::new(),
        index: FxHashMap::default(),
        pending: Vec::new(),
        spare: Vec::new(),
        home,
        returned,
        in_flight: 0,
        fanouts: Arc::new(AtomicUsize::new(0)),
        active: Vec::new(),
        touched: Vec::new(),
        replies: Vec::new(),
        sent: 0,
        replies_dropped: 0,
        partial: Share {
            budget: ctx.partial.clone(),
            held: 0,
        },
        queued: Share {
            budget: ctx.replies.clone(),
            held: 0,
        },
        now: 0.0,
        first_pending: 0.0,
        dispatches: 0,
        messages: 0,
        on_models: false,
        rate_since: crate::clock::wall(),
        rate_events: 0,
        bulk: false,
        last_read: 0.0,
    };
    let mut parts = Parts {
        conn,
        reader,
        wr,
        settings,
        partial_since: None,
    };
    let mut at = Home::Models;
    loop {
        let next = match at {
            Home::Models => serve(parts, Home::Models).await,
            Home::Main => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let queued = actix::System::current().arbiter().spawn_fn(move || {
                    actix::spawn(async move {
                        let _ = tx.send(serve(parts, Home::Main).await);
                    });
                });
                if !queued {
                    // The main thread is gone (shutdown): the connection goes with it.
                    return;
                }
                rx.await.ok().flatten()
            }
        };
        match next {
            Some((p, to)) => {
                parts = p;
                at = to;
            }
            None => return,
        }
    }
}

/// Serves the connection on this thread until it closes (`None`) or should move (its parts
/// and where to).
async fn serve(parts: Parts, here: Home) -> Option<(Parts, Home)> {
    let Parts {
        mut conn,
        mut reader,
        mut wr,
        settings,
        mut partial_since,
    } = parts;
    if !attach_or_log(&wr.0) {
        return None;
    }
    conn.on_models = here == Home::Models;
    let ctx = conn.ctx.clone();
    let mut shutdown = ctx.shutdown.clone();
    // Why the connection is closed by the daemon, if it is: the reply says so.
    let mut closing: Option<(ErrorCode, String)> = None;
    // Read on the ingest tick, off the reactor (see `tick`), and the empty ticks since the
    // last that found data.
    let mut resting = false;
    let mut empty_ticks = 0u32;
    // Shutdown came while resting: what the socket holds is read once more, then it closes.
    let mut final_read = false;
    'conn: loop {
        let mut op;
        let accepted_before = conn.accepted;
        // Whether a whole line is buffered already (read at the tick).
        let mut ready = false;
        if resting {
            let ticked = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {
                    final_read = true;
                    Ok(())
                }
                r = tick::next(settings.tick.unwrap_or_default()) => r,
            };
            // Without a tick the connection waits for its data again, after this read.
            let stay = match ticked {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(error = %error, "no ingest tick; the connection is read as its data arrives");
                    false
                }
            };
            match poll_once(reader.fill_step()) {
                Some(Ok(Some(true))) => {
                    empty_ticks = 0;
                    ready = true;
                    resting = stay;
                }
                _ if final_read => break 'conn,
                Some(Ok(Some(false))) => break 'conn,
                Some(Err(error)) => {
                    tracing::debug!(error = %error, "connection read failed");
                    break 'conn;
                }
                // Part of a line: the rest is waited for on the reactor, with its timeout.
                Some(Ok(None)) => resting = false,
                None => {
                    empty_ticks += 1;
                    if stay && empty_ticks < tick::TICK_EMPTY_LIMIT {
                        continue 'conn;
                    }
                    // Quiet for several ticks: its batch buffers go now, rather than after
                    // another timer (an idle daemon's wake-up).
                    resting = false;
                    if conn.holds_batch_memory() {
                        conn.release_batch_memory();
                    }
                }
            }
            if !resting && !attach_or_log(&wr.0) {
                break 'conn;
            }
        }
        if !ready {
            // About to wait for more input. A busy connection's batch buffers (a few MiB) are
            // kept across the short gaps of a burst, and let go once it has been quiet for
            // a while, so an idle connection keeps only a little room.
            if conn.holds_batch_memory() && poll_once(reader.fill_step()).is_none() {
                let quiet = tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => break,
                    r = tokio::time::timeout(BATCH_MEMORY_KEEP, reader.fill_step()) => r.is_err(),
                };
                if quiet {
                    conn.release_batch_memory();
                }
            }
            // Waits for a whole line, sending queued replies as the client reads them. A
            // line left unfinished is bounded in time (`partial_line_timeout_s`, from its
            // first byte, however slowly the rest trickles in) and, across connections, in
            // bytes (`partial_line_budget_bytes`).
            let idle_deadline = settings.idle_timeout.map(|t| Instant::now() + t);
            loop {
                let partial = reader.partial_len();
                if partial == 0 {
                    partial_since = None;
                } else if partial_since.is_none() {
                    partial_since = Some(Instant::now());
                }
                if conn.partial.hold(partial) {
                    closing = Some((
                        ErrorCode::Overloaded,
                        format!(
                            "unfinished lines of all connections exceed partial_line_budget_bytes ({}); send whole lines",
                            ctx.partial.budget
                        ),
                    ));
                    break 'conn;
                }
                let partial_deadline = partial_since
                    .zip(settings.partial_line_timeout)
                    .map(|(since, t)| since + t);
                let deadline = match (idle_deadline, partial_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let unsent = conn.unsent() > 0;
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => break 'conn,
                    r = reader.fill_step() => match r {
                        Ok(Some(true)) => break,
                        Ok(Some(false)) => break 'conn,
                        Ok(None) => {}
                        Err(error) => {
                            tracing::debug!(error = %error, "connection read failed");
                            break 'conn;
                        }
                    },
                    r = wr.writable(), if unsent => {
                        if r.is_err() || conn.send_replies(&mut wr).await.is_err() {
                            break 'conn;
                        }
                    }
                    () = expired => {
                        closing = Some(if partial_deadline.is_some_and(|d| d <= Instant::now()) {
                            let t = settings.partial_line_timeout.unwrap_or_default().as_secs();
                            (ErrorCode::PartialLineTimeout, format!("a line stayed unfinished for {t} s (partial_line_timeout_s); end each line with \\n"))
                        } else {
                            tracing::debug!("closing an idle connection");
                            (ErrorCode::IdleTimeout, "idle timeout".to_owned())
                        });
                        break 'conn;
                    }
                }
            }
        }
        let Some(frame) = reader.try_next_buffered() else {
            continue;
        };
        conn.now = crate::clock::wall();
        let others_read = if here == Home::Models {
            tick::note_read(conn.now)
        } else {
            f64::NEG_INFINITY
        };
        let gap = conn.now - conn.last_read;
        op = conn.frame(frame);
        // Whether the client writes back to back (this read came within `BUSY_GAP_S` of the
        // last one): only then can a yield find more to read.
        let busy = conn.now - conn.last_read < BUSY_GAP_S;
        // Everything else readable without waiting, up to an op (its barrier covers exactly
        // the lines before it) or a full dispatch. An error or EOF here is met again by the
        // next wait, which handles it.
        //
        // tokio assumes a socket is drained when a read returns less than asked for, and
        // until the runtime next polls for I/O it reports "not ready" without trying. Under
        // load the sender has usually written more by then, so a drained-looking socket gets
        // one yield (the runtime polls for I/O before resuming this task) before the batch
        // goes: batches then fill to `DISPATCH_EVENTS` instead of ending with each read. A
        // client that writes now and then (a paced load: one write every 10 ms) gets no
        // yield: it has nothing more on the way, and the yield would cost a poll for I/O.
        let mut yielded = !busy;
        while op.is_none() {
            if let Some(frame) = reader.try_next_buffered() {
                op = conn.frame(frame);
                continue;
            }
            if conn.pending.len() >= DISPATCH_EVENTS {
                break;
            }
            match poll_once(reader.fill()) {
                Some(Ok(true)) => {
                    conn.now = crate::clock::wall();
                    yielded = false;
                    if conn.now - conn.first_pending >= DISPATCH_DELAY_S {
                        break;
                    }
                }
                Some(_) => break,
                None if !yielded && !conn.pending.is_empty() => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                None => break,
            }
        }
        conn.last_read = conn.now;
        // Backpressure: wait for the models to finish an earlier dispatch of this connection.
        while conn.in_flight >= MAX_IN_FLIGHT {
            let back = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                back = conn.returned.recv() => back,
            };
            match back {
                Some(array) => conn.take_back(array),
                // Unreachable (the connection holds a sender); never wait forever.
                None => break,
            }
        }
        conn.dispatch();
        if conn.rate_events as f64
            > tick::TICK_MAX_EVENTS_PER_S * (conn.now - conn.rate_since).max(0.2)
        {
            tick::note_heavy(conn.now);
        }
        let plain = op.is_none();
        match op {
            Some(Op::Flush) => conn.barrier().await,
            Some(Op::Ping) => conn.replies.extend_from_slice(protocol::PING_REPLY),
            None => {}
        }
        if conn.send_replies(&mut wr).await.is_err() {
            break;
        }
        if final_read {
            break;
        }
        if here == Home::Models
            && let Some(every) = settings.tick
        {
            let plain = plain && reader.partial_len() == 0 && conn.unsent() == 0;
            let events = conn.accepted - accepted_before;
            let busy = tick::busy(conn.now);
            let next = tick::rests(
                every,
                resting,
                plain,
                busy,
                events,
                gap,
                conn.now - others_read,
            );
            if next && !resting {
                rest(&wr.0);
                empty_ticks = 0;
            } else if !next && resting && !attach_or_log(&wr.0) {
                break;
            }
            resting = next;
        }
        if let Some(to) = conn.move_to(here) {
            detach(&wr.0);
            return Some((
                Parts {
                    conn,
                    reader,
                    wr,
                    settings,
                    partial_since,
                },
                to,
            ));
        }
    }
    conn.dispatch();
    conn.partial.hold(0);
    conn.queued.hold(0);
    if let Some((code, detail)) = &closing {
        if !matches!(code, ErrorCode::IdleTimeout) {
            tracing::debug!(code = code.as_str(), "closing a connection");
            if let Some(c) = ctx.stats.rejected_by_code.get(*code as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        protocol::write_error_reply(&mut conn.replies, *code, conn.line_no, detail);
    }
    // What is still queued goes out if the client reads it soon; a client that never reads
    // does not hold the connection (and its slot) open.
    if conn.unsent() > 0 {
        let _ = tokio::time::timeout(
            CLOSE_WRITE_TIMEOUT,
            wr.write_all(&conn.replies[conn.sent..]),
        )
        .await;
    }
    tracing::debug!(
        accepted = conn.accepted,
        rejected = conn.rejected,
        lines = conn.line_no,
        dispatches = conn.dispatches,
        messages = conn.messages,
        replies_dropped = conn.replies_dropped,
        "connection closed"
    );
    None
}

/// Polls `f` once: its output if it is ready now, without waiting. Only for cancel-safe
/// futures (the reader's `fill`): a pending one is dropped, and the next real wait registers
/// the task's waker again.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

impl Conn {
    /// Where this connection should run from now on, if elsewhere (see `Home`).
    fn move_to(&mut self, here: Home) -> Option<Home> {
        let elapsed = self.now - self.rate_since;
        if std::mem::take(&mut self.bulk) && here == Home::Models {
            self.rate_since = self.now;
            self.rate_events = 0;
            return Some(Home::Main);
        }
        match here {
            Home::Models if self.rate_events > HEAVY_EVENTS_PER_S => {
                let fast = elapsed < 1.0;
                self.rate_since = self.now;
                self.rate_events = 0;
                fast.then_some(Home::Main)
            }
            Home::Models if elapsed >= 1.0 => {
                self.rate_since = self.now;
                self.rate_events = 0;
                None
            }
            Home::Main if elapsed >= 1.0 => {
                let slow = (self.rate_events as f64) < LIGHT_EVENTS_PER_S as f64 * elapsed;
                self.rate_since = self.now;
                self.rate_events = 0;
                slow.then_some(Home::Models)
            }
            _ => None,
        }
    }

    /// Handles one frame; returns an op that needs the async path (flush, ping).
    fn frame(&mut self, frame: Frame<'_>) -> Option<Op> {
        self.line_no += 1;
        let line = match frame {
            Frame::TooLong => {
                let max = self.ctx.settings.borrow().max_line_bytes;
                self.reject(
                    ErrorCode::LineTooLong,
                    &format!("line longer than max_line_bytes ({max})"),
                );
                return None;
            }
            Frame::Line(bytes) => bytes,
        };
        // Matched by reference: moving the ~330-byte event out of the result costs a copy.
        let decoded = protocol::decode_line(line);
        match &decoded {
            Ok(Line::Empty) => None,
            &Ok(Line::Op(op)) => Some(op),
            Ok(Line::Event(ev)) => {
                if let Some(ts) = ev.ts
                    && ts > self.now + MAX_TS_AHEAD_S
                {
                    let hint = if ts > 1e11 {
                        " (it looks like milliseconds: divide by 1000)"
                    } else {
                        ""
                    };
                    self.reject(
                        ErrorCode::BadField,
                        &format!(
                            "ts {ts} is more than a day ahead of the time of receipt ({:.0}); ts is Unix seconds{hint}",
                            self.now
                        ),
                    );
                    return None;
                }
                let slot = match self.index.get(ev.model_id.as_bytes()) {
                    Some(&s) => s,
                    None => match self.ctx.registry.get_or_create(ev.model_id) {
                        Ok(handle) => {
                            let s = self.slots.len() as u32;
                            self.slots.push(Slot {
                                handle,
                                touched: None,
                                count: 0,
                            });
                            self.index.insert(IdKey::new(ev.model_id), s);
                            s
                        }
                        Err(e @ RegistryError::TooManyModels(_)) => {
                            self.reject(ErrorCode::TooManyModels, &e.to_string());
                            return None;
                        }
                        Err(e) => {
                            tracing::error!(model_id = ev.model_id, error = %e, "cannot start the model's actor");
                            self.reject(ErrorCode::Internal, &e.to_string());
                            return None;
                        }
                    },
                };
                // Custom metrics and meta allocate only when the event has them.
                let obs = Obs::from_event(ev, self.now);
                if self.pending.is_empty() {
                    self.first_pending = self.now;
                }
                self.pending.push((slot, obs));
                self.accepted += 1;
                None
            }
            Err(e) => {
                self.reject(e.code, &e.detail);
                None
            }
        }
    }

    fn reject(&mut self, code: ErrorCode, detail: &str) {
        self.rejected += 1;
        let stats = &self.ctx.stats;
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = stats.rejected_by_code.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // Error replies are best effort: a client that does not read them must not stall
        // its own writes (the daemon would stop reading it), so what does not fit in the
        // bounded queue is dropped and counted; the flush reply carries the count.
        let before = self.replies.len();
        protocol::write_error_reply(&mut self.replies, code, self.line_no, detail);
        if self.unsent() > REPLY_BUFFER || self.queued.hold(self.unsent()) {
            self.replies.truncate(before);
            self.queued.hold(self.unsent());
            self.replies_dropped += 1;
            stats.replies_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reply bytes queued and not yet written.
    fn unsent(&self) -> usize {
        self.replies.len() - self.sent
    }

    /// Writes what the socket takes now, without waiting. Only op replies (flush, ping) can
    /// push the queue past [`REPLY_BUFFER`]: a client asks for those, so past
    /// [`REPLY_HARD_CAP`] of them the connection waits for it to read.
    async fn send_replies(&mut self, wr: &mut SockWrite) -> std::io::Result<()> {
        while self.sent < self.replies.len() {
            match wr.try_write(&self.replies[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.replies.len() {
            self.replies.clear();
            self.sent = 0;
        } else if self.sent >= self.replies.len() / 2 {
            self.replies.drain(..self.sent);
            self.sent = 0;
        }
        if self.unsent() > REPLY_HARD_CAP {
            wr.write_all(&self.replies[self.sent..]).await?;
            self.replies.clear();
            self.sent = 0;
        }
        self.queued.hold(self.unsent());
        Ok(())
    }
}
