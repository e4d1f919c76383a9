//! The observation log: what each model saw since its last checkpoint, appended to segment
//! files beside sled and made durable by the store's group commit.
//!
//! A model's state is its checkpoint in sled (a [`super::ModelRecord`], whose `events` counts
//! the events it covers) plus the events logged after it, replayed through the same policy code
//! at load. Bytes written per event are those of the event's numbers (about 15 bytes for a
//! typical event), never those of the windows it moves.
//!
//! # Files
//!
//! `state_dir/wal/<16 hex digits>.wal`, numbered upwards; every run starts a new segment (so a
//! torn tail from a power cut is never followed by new frames), and a segment is rotated once it
//! holds [`SEGMENT_BYTES`]. A segment starts with a header ([`MAGIC`], its number) and then
//! holds frames:
//!
//! ```text
//! frame   = len: u32 LE | crc32c(len bytes ++ payload): u32 LE | payload (len bytes)
//! payload = item*
//! item    = 0x01 NAME   ref: varint, len: varint, model id bytes     (ref valid in this segment)
//!         | 0x02 GROUP  ref: varint, first_seq: varint, count: varint, event*
//! event   = mask: u8, ts: num, [received: zigzag varint ms after ts | num], [drift_score: num],
//!           [accuracy: num], [value: num],
//!           [metrics: count varint, (name len varint, name bytes, value num)*]
//! num     = varint((zigzag(m) << 4) | k)  for the value m / 10^k, k in 0..=14
//!         | varint(15) followed by the 8 bytes of the f64 (little-endian)
//! ```
//!
//! `seq` numbers a model's events from 1 (the record's `events` after applying it), so recovery
//! needs no ordering between sled and the log: it applies the logged events whose `seq` is above
//! the checkpoint's `events`, in order. A group copied forward out of an old segment repeats
//! `seq`s that recovery already has, and is skipped.
//!
//! Recovery reads every segment in order and stops reading a segment at its first short or bad
//! frame (a write the cut tore): what follows in that segment was never acknowledged.
//!
//! Segments are deleted only after a flush made durable every checkpoint covering their events
//! (see `Wal::retirable`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::Obs;

/// Header of every segment file.
pub const MAGIC: &[u8; 8] = b"VSWAL\x00\x00\x01";
/// A segment is rotated once it holds this much.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Frames larger than this are refused at recovery as corrupt (no append builds one: a flush
/// writes its buffer in frames of at most this size).
pub const MAX_FRAME: usize = 8 << 20;
const HEADER_LEN: usize = 16;

const ITEM_NAME: u8 = 1;
const ITEM_GROUP: u8 = 2;

const HAS_DRIFT: u8 = 1;
const HAS_ACCURACY: u8 = 2;
const HAS_ERROR: u8 = 4;
const ERROR_TRUE: u8 = 8;
const HAS_VALUE: u8 = 16;
const HAS_METRICS: u8 = 32;
/// The time of receipt follows `ts` as whole milliseconds after it (a zigzag varint `d`,
/// the time being `ts + d / 1000`, see [`received_after`]): only when the event had its own
/// `ts` (otherwise they are the same number, and older logs never have it).
const HAS_RECEIVED: u8 = 64;
/// The time of receipt follows `ts` as a number (when it is not `ts` plus whole
/// milliseconds; the daemon always makes it so, see `Obs::from_event`).
const RECEIVED_RAW: u8 = 128;

/// The time of receipt `d` milliseconds after `ts`, as the daemon computes it and the log
/// gives it back (the same operations, so the same bits).
pub fn received_after(ts: f64, d: i64) -> f64 {
    ts + d as f64 / 1000.0
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("observation log i/o on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an observation log segment (bad header)")]
    BadHeader { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// Codec

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*pos`; `None` when the bytes end first or it is longer than 10 bytes.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// 10^k for the decimal number encoding; every one of them is exact in an f64.
const POW10: [f64; 15] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
];
const RAW: u64 = 15;

/// Writes `v` as the shortest `m / 10^k` that gives back exactly its bits (metrics are mostly
/// short decimals: 0.1234 takes 3 bytes instead of 8), else its 8 raw bytes. Decoding is one
/// correctly rounded division of two exact numbers, so it is bit-exact by construction: the
/// check below is the decoder itself.
pub fn put_num(out: &mut Vec<u8>, v: f64) {
    match decimal(v) {
        Some(h) => put_varint(out, h),
        None => {
            put_varint(out, RAW);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The head `(zigzag(m) << 4) | k` of the smallest `k` for which `m = round(v * 10^k)` (below
/// 9e15 in magnitude) decodes back to `v`, if any.
///
/// Only a candidate that can pass is checked with the decoder's division (the one exact
/// check): if `RN(m / p) == v` then `|m - v·p| <= p·ulp(v)/2 <= |v·p|·2^-53`, and the
/// product `y = RN(v·p)` is within `|v·p|·2^-53` of `v·p`, so `|y - m| <= |y|·2^-51` (with
/// room to spare). A value that is not a short decimal (a `SystemTime` in seconds, a float
/// with 17 significant digits) fails that test at every `k`, so it costs a multiplication and
/// two additions per `k` instead of a division and a call to libm's `round`. The output is
/// that of the plain loop over every `k` (tests compare the two).
#[inline]
fn decimal(v: f64) -> Option<u64> {
    // Adding then subtracting 1.5 * 2^52 rounds a number below 2^51 to an integer (to even).
    const ROUNDER: f64 = 6755399441055744.0;
    const TWO_51: f64 = 2251799813685248.0;
    const TWO_M50: f64 = 1.0 / (1u64 << 50) as f64;
    if !v.is_finite() {
        return None;
    }
    for (k, &p) in POW10.iter().enumerate() {
        let y = v * p;
        let a = y.abs();
        // `round(y)` reaches 9e15 exactly when `y` does: above 2^52 every f64 is an integer.
        if a >= 9.0e15 {
            return None;
        }
        // The test above, on the nearest integer to even (both subtractions are exact); from
        // 2^51 up every candidate passes it (the bound is 2 or more).
        if a < TWO_51 && (y - ((y + ROUNDER) - ROUNDER)).abs() > a * TWO_M50 {
            continue;
        }
        // `round` (half away from zero) without the libm call: `y - trunc(y)` is exact.
        let t = y as i64;
        let f = y - t as f64;
        let m = t + i64::from(f >= 0.5) - i64::from(f <= -0.5);
        if (m as f64 / p).to_bits() == v.to_bits() {
            let zz = ((m << 1) ^ (m >> 63)) as u64;
            return Some((zz << 4) | k as u64);
        }
    }
    None
}

pub fn get_num(buf: &[u8], pos: &mut usize) -> Option<f64> {
    let h = get_varint(buf, pos)?;
    let k = h & 15;
    if k == RAW {
        let bytes = buf.get(*pos..*pos + 8)?;
        *pos += 8;
        return Some(f64::from_le_bytes(bytes.try_into().ok()?));
    }
    let zz = h >> 4;
    let m = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
    Some(m as f64 / POW10[k as usize])
}

/// Appends one event (what the policies and counters read; `meta` only matters to decisions,
/// which replay does not repeat).
pub fn put_event(out: &mut Vec<u8>, obs: &Obs) {
    let mut mask = 0u8;
    if obs.drift_score.is_some() {
        mask |= HAS_DRIFT;
    }
    if obs.accuracy.is_some() {
        mask |= HAS_ACCURACY;
    }
    if let Some(e) = obs.error {
        mask |= HAS_ERROR;
        if e {
            mask |= ERROR_TRUE;
        }
    }
    if obs.value.is_some() {
        mask |= HAS_VALUE;
    }
    if !obs.metrics.is_empty() {
        mask |= HAS_METRICS;
    }
    let mut delta = None;
    if obs.received > 0.0 && obs.received.to_bits() != obs.ts.to_bits() {
        let d = ((obs.received - obs.ts) * 1000.0).round();
        if d.abs() < 9.0e15 && received_after(obs.ts, d as i64).to_bits() == obs.received.to_bits()
        {
            mask |= HAS_RECEIVED;
            delta = Some(d as i64);
        } else {
            mask |= RECEIVED_RAW;
        }
    }
    out.push(mask);
    put_num(out, obs.ts);
    match delta {
        Some(d) => put_varint(out, ((d << 1) ^ (d >> 63)) as u64),
        None if mask & RECEIVED_RAW != 0 => put_num(out, obs.received),
        None => {}
    }
    for v in [obs.drift_score, obs.accuracy, obs.value]
        .into_iter()
        .flatten()
    {
        put_num(out, v);
    }
    if !obs.metrics.is_empty() {
        put_varint(out, obs.metrics.len() as u64);
        for (name, v) in &obs.metrics {
            put_varint(out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            put_num(out, *v);
        }
    }
}

pub fn get_event(buf: &[u8], pos: &mut usize) -> Option<Obs> {
    let mask = *buf.get(*pos)?;
    *pos += 1;
    // Every bit of the mask has a meaning now: no byte is refused here.
    let ts = get_num(buf, pos)?;
    let received = if mask & HAS_RECEIVED != 0 {
        let zz = get_varint(buf, pos)?;
        received_after(ts, ((zz >> 1) as i64) ^ -((zz & 1) as i64))
    } else if mask & RECEIVED_RAW != 0 {
        get_num(buf, pos)?
    } else {
        ts
    };
    let mut obs = Obs {
        ts,
        received,
        ..Obs::default()
    };
    if mask & HAS_DRIFT != 0 {
        obs.drift_score = Some(get_num(buf, pos)?);
    }
    if mask & HAS_ACCURACY != 0 {
        obs.accuracy = Some(get_num(buf, pos)?);
    }
    if mask & HAS_ERROR != 0 {
        obs.error = Some(mask & ERROR_TRUE != 0);
    }
    if mask & HAS_VALUE != 0 {
        obs.value = Some(get_num(buf, pos)?);
    }
    if mask & HAS_METRICS != 0 {
        let n = get_varint(buf, pos)?;
        for _ in 0..n {
            let len = usize::try_from(get_varint(buf, pos)?).ok()?;
            let name = std::str::from_utf8(buf.get(*pos..pos.checked_add(len)?)?).ok()?;
            *pos += len;
            obs.metrics.push((name.into(), get_num(buf, pos)?));
        }
    }
    Some(obs)
}

/// Decodes a tail's events.
pub fn decode_events(bytes: &[u8]) -> Option<Vec<Obs>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        out.push(get_event(bytes, &mut pos)?);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// In-memory state

/// The model's ref in the current segment (`refs`), defining it in `buf` on first use.
fn reference(refs: &mut HashMap<Arc<str>, u64>, buf: &mut Vec<u8>, id: &Arc<str>) -> u64 {
    if let Some(&r) = refs.get(id) {
        return r;
    }
    let r = refs.len() as u64;
    refs.insert(id.clone(), r);
    buf.push(ITEM_NAME);
    put_varint(buf, r);
    put_varint(buf, id.len() as u64);
    buf.extend_from_slice(id.as_bytes());
    r
}

/// A model's events since its checkpoint, encoded as in the log (so an append is encoded once
/// and copied into the frame buffer).
#[derive(Debug, Default)]
pub struct Tail {
    /// `seq` of the first event in `bytes`.
    pub start_seq: u64,
    pub count: u64,
    pub bytes: Vec<u8>,
    /// The oldest segment holding any of these events (it cannot be deleted before them).
    pub segment: u64,
    /// Came from the log at start (not yet replayed by a model in this run).
    pub recovered: bool,
    /// The model's ref in segment `ref_segment` (0: none yet), so that an append looks the
    /// model up once.
    ref_segment: u64,
    r: u64,
}

impl Tail {
    pub fn next_seq(&self) -> u64 {
        self.start_seq + self.count
    }
}

/// Everything the log keeps in memory, behind the store's mutex.
pub struct Wal {
    pub dir: PathBuf,
    /// Items not written yet (the next frame's payload).
    pub buf: Vec<u8>,
    /// The segment the next frame goes to, and whether its file exists yet.
    pub segment: u64,
    pub segment_created: bool,
    /// Bytes in that segment (header included) once `buf` is written.
    pub segment_len: u64,
    /// Model id -> ref in the current segment.
    refs: HashMap<Arc<str>, u64>,
    pub tails: HashMap<Arc<str>, Tail>,
    /// Encoded bytes held in `tails`.
    pub tail_bytes: u64,
    /// Segment files on disk, oldest first, with their lengths.
    pub segments: Vec<(u64, u64)>,
    /// The open file of the current segment, once created.
    pub file: Option<File>,
}

/// What recovery found, for the log and `status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Recovery {
    pub segments: usize,
    pub frames: u64,
    pub events: u64,
    pub models: usize,
    /// Bytes after the last good frame of a segment (a write a power cut tore; never
    /// acknowledged), summed over segments.
    pub torn_bytes: u64,
    pub torn_segments: Vec<String>,
}

impl Wal {
    /// Reads every segment under `dir` (creating `dir` if needed) into tails, and sets up the
    /// next segment after the newest.
    pub fn open(dir: &Path) -> Result<(Wal, Recovery), WalError> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if created && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut numbers = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".wal"))
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            else {
                continue;
            };
            numbers.push(n);
        }
        numbers.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_owned(),
            buf: Vec::new(),
            segment: numbers.last().map_or(1, |n| n + 1),
            segment_created: false,
            segment_len: HEADER_LEN as u64,
            refs: HashMap::new(),
            tails: HashMap::new(),
            tail_bytes: 0,
            segments: Vec::new(),
            file: None,
        };
        let mut rec = Recovery::default();
        for n in numbers {
            let path = wal.segment_path(n);
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            rec.segments += 1;
            wal.segments.push((n, bytes.len() as u64));
            if bytes.len() < HEADER_LEN {
                // Created, then cut before its header was synced: nothing in it was ever
                // acknowledged.
                rec.torn_bytes += bytes.len() as u64;
                if !bytes.is_empty() {
                    rec.torn_segments.push(path.display().to_string());
                }
                continue;
            }
            if &bytes[..8] != MAGIC || bytes[8..16] != n.to_le_bytes() {
                return Err(WalError::BadHeader { path });
            }
            let good = wal.replay_segment(n, &bytes, &mut rec);
            if good < bytes.len() {
                rec.torn_bytes += (bytes.len() - good) as u64;
                rec.torn_segments.push(path.display().to_string());
            }
        }
        rec.models = wal.tails.len();
        for t in wal.tails.values_mut() {
            t.recovered = true;
        }
        wal.tail_bytes = wal.tails.values().map(|t| t.bytes.len() as u64).sum();
        Ok((wal, rec))
    }

    /// Reads the frames of one segment into tails; returns the length of its good prefix.
    fn replay_segment(&mut self, n: u64, bytes: &[u8], rec: &mut Recovery) -> usize {
        let mut pos = HEADER_LEN;
        let mut names: HashMap<u64, Arc<str>> = HashMap::new();
        loop {
            let Some(head) = bytes.get(pos..pos + 8) else {
                return pos;
            };
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len == 0 || len > MAX_FRAME {
                return pos;
            }
            let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
                return pos;
            };
            if crc32c::crc32c_append(crc32c::crc32c(&head[..4]), payload) != crc {
                return pos;
            }
            if !self.replay_frame(n, payload, &mut names, rec) {
                return pos;
            }
            rec.frames += 1;
            pos += 8 + len;
        }
    }

    /// One frame's items; false if it does not parse (then the frame counts as torn: a
    /// frame with a good checksum that does not parse is from a newer or broken writer).
    fn replay_frame(
        &mut self,
        n: u64,
        p: &[u8],
        names: &mut HashMap<u64, Arc<str>>,
        rec: &mut Recovery,
    ) -> bool {
        let mut pos = 0;
        while pos < p.len() {
            let kind = p[pos];
            pos += 1;
            match kind {
                ITEM_NAME => {
                    let (Some(r), Some(len)) = (get_varint(p, &mut pos), get_varint(p, &mut pos))
                    else {
                        return false;
                    };
                    let Some(id) = usize::try_from(len)
                        .ok()
                        .and_then(|len| p.get(pos..pos.checked_add(len)?))
                        .and_then(|b| std::str::from_utf8(b).ok())
                    else {
                        return false;
                    };
                    pos += id.len();
                    names.insert(r, id.into());
                }
                ITEM_GROUP => {
                    let (Some(r), Some(first), Some(count)) = (
                        get_varint(p, &mut pos),
                        get_varint(p, &mut pos),
                        get_varint(p, &mut pos),
                    ) else {
                        return false;
                    };
                    let Some(id) = names.get(&r).cloned() else {
                        return false;
                    };
                    let start = pos;
                    let mut ends = Vec::with_capacity(count.min(1 << 16) as usize);
                    for _ in 0..count {
                        if get_event(p, &mut pos).is_none() {
                            return false;
                        }
                        ends.push(pos);
                    }
                    rec.events += count;
                    let tail = self.tails.entry(id).or_insert_with(|| Tail {
                        start_seq: first,
                        segment: n,
                        ..Tail::default()
                    });
                    if first > tail.next_seq() || tail.count == 0 {
                        // A gap: the events before it were covered by a checkpoint that let
                        // their segment go (or this is the first sight). Start over here.
                        *tail = Tail {
                            start_seq: first,
                            segment: n,
                            ..Tail::default()
                        };
                    }
                    // Skip what the tail already has (a group copied forward).
                    let skip = tail.next_seq().saturating_sub(first);
                    if skip < count {
                        let from = if skip == 0 {
                            start
                        } else {
                            ends[skip as usize - 1]
                        };
                        tail.bytes.extend_from_slice(&p[from..pos]);
                        tail.count += count - skip;
                    }
                }
                _ => return false,
            }
        }
        true
    }

    pub fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:016x}.wal"))
    }

    /// Appends a model's events (already applied; `first_seq` numbers the first) to its tail
    /// and to the next frame. Returns the tail's size in bytes.
    pub fn append(&mut self, id: &Arc<str>, first_seq: u64, events: &[Obs]) -> u64 {
        let segment = self.segment;
        // One lookup when the model has a tail (the usual case); the id is cloned only for a
        // new one.
        let tail = match self.tails.get_mut(&**id) {
            Some(t) => t,
            None => self.tails.entry(id.clone()).or_insert_with(|| Tail {
                start_seq: first_seq,
                segment,
                ..Tail::default()
            }),
        };
        if tail.count == 0 || tail.next_seq() != first_seq {
            // Empty, or not following on (a checkpoint the tail did not see): start afresh.
            // The checkpoint covers what came before.
            self.tail_bytes -= tail.bytes.len() as u64;
            *tail = Tail {
                start_seq: first_seq,
                segment,
                ..Tail::default()
            };
        }
        let from = tail.bytes.len();
        for e in events {
            put_event(&mut tail.bytes, e);
        }
        tail.count += events.len() as u64;
        tail.recovered = false;
        let added = tail.bytes.len() - from;
        self.tail_bytes += added as u64;
        let size = tail.bytes.len() as u64;
        if tail.ref_segment != segment {
            tail.r = reference(&mut self.refs, &mut self.buf, id);
            tail.ref_segment = segment;
        }
        self.buf.push(ITEM_GROUP);
        put_varint(&mut self.buf, tail.r);
        put_varint(&mut self.buf, first_seq);
        put_varint(&mut self.buf, events.len() as u64);
        self.buf.extend_from_slice(&tail.bytes[from..]);
        size
    }

    /// The model's ref in the current segment, defining it there on first use.
    fn reference(&mut self, id: &Arc<str>) -> u64 {
        reference(&mut self.refs, &mut self.buf, id)
    }

    /// A checkpoint now covers the model's events: its tail is no longer needed.
    pub fn drop_tail(&mut self, id: &str) {
        if let Some(t) = self.tails.remove(id) {
            self.tail_bytes -= t.bytes.len() as u64;
        }
    }

    /// Copies the tails held in segments up to `upto` into the next frame, so those segments
    /// can go once this frame is durable (used when models that stopped sending keep old
    /// segments). Returns how many tails were copied.
    pub fn copy_forward(&mut self, upto: u64) -> usize {
        let ids: Vec<Arc<str>> = self
            .tails
            .iter()
            .filter(|(_, t)| t.segment <= upto && t.segment < self.segment && t.count > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for id in &ids {
            let r = self.reference(id);
            let segment = self.segment;
            let Some(t) = self.tails.get_mut(id) else {
                continue;
            };
            self.buf.push(ITEM_GROUP);
            put_varint(&mut self.buf, r);
            put_varint(&mut self.buf, t.start_seq);
            put_varint(&mut self.buf, t.count);
            self.buf.extend_from_slice(&t.bytes);
            t.segment = segment;
        }
        ids.len()
    }

    /// After a failed write: drops the pending frame (its events are in the tails), moves to
    /// a new segment and puts every tail into its first frame. Returns how many tails.
    pub fn rewrite_all(&mut self) -> usize {
        self.buf.clear();
        self.rotate();
        self.copy_forward(u64::MAX)
    }

    /// Whether events wait for the next frame.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The oldest segment still needed by a tail (or the current one).
    pub fn oldest_needed(&self) -> u64 {
        self.tails
            .values()
            .filter(|t| t.count > 0)
            .map(|t| t.segment)
            .min()
            .unwrap_or(self.segment)
            .min(self.segment)
    }

    /// Takes the pending items as one frame for the current segment, rotating afterwards if
    /// the segment is full (the next frames then define their refs anew in the next one).
    /// Returns the segment number, whether its file must be created, and the frame.
    pub fn take_frame(&mut self) -> Option<(u64, bool, Vec<u8>)> {
        if self.buf.is_empty() {
            return None;
        }
        let payload = std::mem::take(&mut self.buf);
        let mut frame = Vec::with_capacity(payload.len() + 8 + HEADER_LEN);
        let create = !self.segment_created;
        if create {
            frame.extend_from_slice(MAGIC);
            frame.extend_from_slice(&self.segment.to_le_bytes());
        }
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(&payload);
        let n = self.segment;
        self.segment_created = true;
        self.segment_len += (payload.len() + 8) as u64;
        match self.segments.last_mut() {
            Some((last, len)) if *last == n => *len = self.segment_len,
            _ => self.segments.push((n, self.segment_len)),
        }
        if self.segment_len >= SEGMENT_BYTES || payload.len() >= MAX_FRAME / 2 {
            self.rotate();
        }
        Some((n, create, frame))
    }

    /// The next frames go to a new segment.
    pub fn rotate(&mut self) {
        self.segment += 1;
        self.segment_created = false;
        self.segment_len = HEADER_LEN as u64;
        self.refs.clear();
    }

    /// Writes a frame taken by [`Wal::take_frame`] and makes it durable. Must be called in
    /// the order frames were taken (the store's flusher is the only caller).
    pub fn write_frame(
        dir: &Path,
        file: &mut Option<(u64, File)>,
        n: u64,
        create: bool,
        frame: &[u8],
    ) -> Result<(), WalError> {
        let path = dir.join(format!("{n:016x}.wal"));
        if create || file.as_ref().is_none_or(|(m, _)| *m != n) {
            let f = OpenOptions::new()
                .append(true)
                .create(create)
                .create_new(create)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            *file = Some((n, f));
        }
        let Some((_, f)) = file.as_mut() else {
            unreachable!("opened above")
        };
        f.write_all(frame).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        if create {
            // The new name is durable only once its directory is.
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// fsync of a directory: makes the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(i: u64) -> Obs {
        Obs {
            ts: 1764172800.25 + i as f64,
            // Received without a ts of its own (the same number), whole milliseconds after
            // it (as the daemon makes it), or at any other time.
            received: match i % 3 {
                0 => 1764172800.25 + i as f64,
                1 => received_after(1764172800.25 + i as f64, 1_234 + i as i64),
                _ => 1764172801.123_456_7 + i as f64,
            },
            drift_score: Some(0.1234),
            accuracy: i.is_multiple_of(2).then_some(0.9512),
            error: Some(i.is_multiple_of(3)),
            value: i.is_multiple_of(5).then_some(-3.0e-7 * i as f64),
            metrics: if i.is_multiple_of(7) {
                vec![("latency_ms".into(), 12.5), ("q".into(), f64::MIN_POSITIVE)]
            } else {
                Vec::new()
            },
            meta: None,
        }
    }

    #[test]
    fn numbers_round_trip_bit_exact_and_short_decimals_are_short() {
        let cases = [
            0.0,
            -0.0,
            1.0,
            0.1234,
            0.95,
            -17.5,
            1764172800.25,
            1764172800.123456,
            0.1 + 0.2,
            0.12345678901234567,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -1e300,
            9.0e15,
            f64::NAN,
            f64::INFINITY,
        ];
        for v in cases {
            let mut b = Vec::new();
            put_num(&mut b, v);
            let mut pos = 0;
            let back = get_num(&b, &mut pos).unwrap();
            assert_eq!(pos, b.len());
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
        let mut b = Vec::new();
        put_num(&mut b, 0.1234);
        assert_eq!(b.len(), 3);
    }

    /// The encoder as first written (a division at every `k`): the fast one must write the
    /// same bytes.
    fn put_num_reference(out: &mut Vec<u8>, v: f64) {
        if v.is_finite() {
            for (k, &p) in POW10.iter().enumerate() {
                let m = (v * p).round();
                if m.abs() >= 9.0e15 {
                    break;
                }
                let m = m as i64;
                if (m as f64 / p).to_bits() == v.to_bits() {
                    let zz = ((m << 1) ^ (m >> 63)) as u64;
                    put_varint(out, (zz << 4) | k as u64);
                    return;
                }
            }
        }
        put_varint(out, RAW);
        out.extend_from_slice(&v.to_le_bytes());
    }

    fn same_bytes_as_reference(v: f64) -> bool {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        put_num(&mut a, v);
        put_num_reference(&mut b, v);
        a == b
    }

    #[test]
    fn numbers_are_written_as_the_reference_encoder_writes_them() {
        let mut vs = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -2.5,
            4503599627370495.5,
            8999999999999999.0,
            9.0e15,
            -9.0e15,
            f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            1e-300,
            0.1 + 0.2,
            1764172800.123456,
            1764172800.1234567,
        ];
        // Neighbours of short decimals, where rounding is closest to the edge.
        for m in [
            1i64,
            7,
            123,
            1234,
            99999,
            1764172800123456,
            8999999999999999,
        ] {
            for p in POW10 {
                let v = m as f64 / p;
                for d in -3i64..=3 {
                    vs.push(f64::from_bits((v.to_bits() as i64 + d) as u64));
                    vs.push(-f64::from_bits((v.to_bits() as i64 + d) as u64));
                }
            }
        }
        for v in vs {
            assert!(same_bytes_as_reference(v), "{v:e} ({:#x})", v.to_bits());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_f64_is_written_as_the_reference_writes_it(bits: u64) {
            proptest::prop_assert!(same_bytes_as_reference(f64::from_bits(bits)));
        }

        #[test]
        fn decimals_are_written_as_the_reference_writes_them(
            m in -9_000_000_000_000_000i64..9_000_000_000_000_000,
            k in 0usize..15,
            d in -2i64..=2,
        ) {
            let v = m as f64 / POW10[k];
            let near = f64::from_bits((v.to_bits() as i64 + d) as u64);
            proptest::prop_assert!(same_bytes_as_reference(v));
            proptest::prop_assert!(same_bytes_as_reference(near));
            // Short ones too, at the magnitudes of timestamps and metrics.
            let short = (m % 100_000) as f64 / POW10[k % 7] + (m % 3) as f64 * 1.7e9;
            proptest::prop_assert!(same_bytes_as_reference(short));
        }

        #[test]
        fn any_f64_round_trips(bits: u64) {
            let v = f64::from_bits(bits);
            let mut b = Vec::new();
            put_num(&mut b, v);
            let mut pos = 0;
            proptest::prop_assert_eq!(get_num(&b, &mut pos).unwrap().to_bits(), bits);
        }

        #[test]
        fn decimals_round_trip(m in -10_000_000_000i64..10_000_000_000, k in 0usize..10) {
            let v = m as f64 / POW10[k];
            let mut b = Vec::new();
            put_num(&mut b, v);
            let mut pos = 0;
            proptest::prop_assert_eq!(get_num(&b, &mut pos).unwrap().to_bits(), v.to_bits());
        }
    }

    #[test]
    fn events_round_trip() {
        let mut b = Vec::new();
        let evs: Vec<Obs> = (0..50).map(obs).collect();
        for e in &evs {
            put_event(&mut b, e);
        }
        assert_eq!(decode_events(&b).unwrap(), evs);
        // A typical event (ts with 2 decimals, drift, accuracy, error) is small.
        let mut one = Vec::new();
        put_event(&mut one, &obs(3));
        assert!(one.len() <= 16, "{} bytes", one.len());
        // Its time of receipt, whole milliseconds after its own ts, adds a few bytes.
        let (mut with_receipt, mut without) = (Vec::new(), Vec::new());
        put_event(&mut with_receipt, &obs(4));
        put_event(
            &mut without,
            &Obs {
                received: obs(4).ts,
                ..obs(4)
            },
        );
        assert!(
            with_receipt.len() <= without.len() + 3,
            "{} bytes against {}",
            with_receipt.len(),
            without.len()
        );
    }

    #[test]
    fn truncated_or_garbage_input_is_refused_not_panicking() {
        let mut b = Vec::new();
        put_event(&mut b, &obs(0));
        for cut in 1..b.len() {
            assert!(decode_events(&b[..cut]).is_none(), "prefix of {cut} bytes");
        }
        assert!(decode_events(&[0xff, 0xff, 0xff]).is_none());
    }

    fn write_all(wal: &mut Wal, file: &mut Option<(u64, File)>) {
        while let Some((n, create, frame)) = wal.take_frame() {
            Wal::write_frame(&wal.dir.clone(), file, n, create, &frame).unwrap();
        }
    }

    #[test]
    fn recovery_rebuilds_tails_and_stops_at_a_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wal");
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let evs: Vec<Obs> = (0..10).map(obs).collect();
        {
            let (mut wal, rec) = Wal::open(&wd).unwrap();
            assert_eq!(rec.segments, 0);
            let mut file = None;
            wal.append(&a, 1, &evs[..4]);
            wal.append(&b, 1, &evs[..2]);
            write_all(&mut wal, &mut file);
            wal.append(&a, 5, &evs[4..6]);
            write_all(&mut wal, &mut file);
            // A frame that a cut tears: half of it reaches the disk.
            wal.append(&a, 7, &evs[6..10]);
            let (n, _, frame) = wal.take_frame().unwrap();
            let mut f = OpenOptions::new()
                .append(true)
                .open(wal.segment_path(n))
                .unwrap();
            f.write_all(&frame[..frame.len() / 2]).unwrap();
        }
        let (wal, rec) = Wal::open(&wd).unwrap();
        assert_eq!(rec.frames, 2);
        assert!(rec.torn_bytes > 0);
        let ta = &wal.tails["a"];
        assert_eq!((ta.start_seq, ta.count), (1, 6));
        assert_eq!(decode_events(&ta.bytes).unwrap(), evs[..6].to_vec());
        assert!(ta.recovered);
        assert_eq!(wal.tails["b"].count, 2);
        // The next run writes a new segment, never after the torn frame.
        assert_eq!(wal.segment, 2);
    }

    #[test]
    fn copied_forward_groups_are_not_applied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wal");
        let a: Arc<str> = "a".into();
        let evs: Vec<Obs> = (0..6).map(obs).collect();
        {
            let (mut wal, _) = Wal::open(&wd).unwrap();
            let mut file = None;
            wal.append(&a, 1, &evs[..3]);
            write_all(&mut wal, &mut file);
            wal.rotate();
            assert_eq!(wal.copy_forward(1), 1);
            wal.append(&a, 4, &evs[3..]);
            write_all(&mut wal, &mut file);
            assert_eq!(wal.oldest_needed(), 2);
        }
        let (wal, _) = Wal::open(&wd).unwrap();
        let ta = &wal.tails["a"];
        assert_eq!((ta.start_seq, ta.count), (1, 6));
        assert_eq!(decode_events(&ta.bytes).unwrap(), evs);
    }
}
