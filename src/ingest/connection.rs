//! One ingest connection: read frames, decode lines, group events per model, send batches to
//! model actors, answer errors and flush barriers.
//!
//! Batching: every complete line already in the read buffer is decoded before anything is
//! sent, and each model gets one `ApplyBatch` per read. Order per model is preserved because
//! an actor's mailbox is FIFO and batches leave in read order.
//!
//! The flush barrier: pending batches are sent, then every model this connection touched since
//! its last barrier is asked for a `Barrier` (answered after all earlier batches are applied
//! and the state is written to the store), then the store is flushed (fsync). Only then is
//! `{"ok": true, ...}` written.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::model::registry::{ModelHandle, RegistryError};
use crate::model::{ApplyBatch, Barrier, ModelActor};
use crate::policy::Obs;
use crate::protocol::{self, ErrorCode, Frame, Line, LineReader, Op};

use super::IngestCtx;

/// What a connection needs from the config; reloads update it through a watch channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnSettings {
    pub max_line_bytes: usize,
    pub idle_timeout: Option<Duration>,
}

struct Conn<'a> {
    ctx: &'a IngestCtx,
    line_no: u64,
    accepted: u64,
    rejected: u64,
    /// Events decoded from the current read, per model, not yet sent.
    pending: HashMap<Arc<str>, (ModelHandle, Vec<Obs>)>,
    /// Models that got events since the last barrier, with their restart epoch at the first.
    touched: HashMap<Arc<str>, (Addr<ModelActor>, Arc<AtomicU64>, u64)>,
    /// This connection's view of the registry, so the hot path takes no lock.
    known: HashMap<Box<str>, ModelHandle>,
    replies: Vec<u8>,
    now: f64,
}

pub async fn run(stream: UnixStream, ctx: &IngestCtx) {
    let settings = ctx.settings.borrow().clone();
    let (rd, mut wr) = stream.into_split();
    let mut reader = LineReader::new(rd, settings.max_line_bytes);
    let mut shutdown = ctx.shutdown.clone();
    let mut conn = Conn {
        ctx,
        line_no: 0,
        accepted: 0,
        rejected: 0,
        pending: HashMap::new(),
        touched: HashMap::new(),
        known: HashMap::new(),
        replies: Vec::new(),
        now: 0.0,
    };
    loop {
        let mut ops = Vec::new();
        {
            let next = async {
                match settings.idle_timeout {
                    Some(t) => tokio::time::timeout(t, reader.next_frame()).await.ok(),
                    None => Some(reader.next_frame().await),
                }
            };
            let frame = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                f = next => f,
            };
            let frame = match frame {
                None => {
                    tracing::debug!("closing an idle connection");
                    let _ = wr
                        .write_all(&protocol::error_reply(
                            ErrorCode::IdleTimeout,
                            conn.line_no,
                            "idle timeout",
                        ))
                        .await;
                    break;
                }
                Some(Ok(Some(f))) => f,
                Some(Ok(None)) => break,
                Some(Err(error)) => {
                    tracing::debug!(error = %error, "connection read failed");
                    break;
                }
            };
            conn.now = crate::command::now();
            if let Some(op) = conn.frame(frame) {
                ops.push((op, conn.line_no));
            }
        }
        // Everything else already buffered, without waiting.
        while ops.is_empty() {
            let Some(frame) = reader.try_next_buffered() else {
                break;
            };
            if let Some(op) = conn.frame(frame) {
                ops.push((op, conn.line_no));
            }
        }
        conn.dispatch();
        for (op, _line) in ops {
            match op {
                Op::Flush => {
                    let reply = conn.barrier().await;
                    conn.replies.extend_from_slice(&reply);
                }
                Op::Ping => conn.replies.extend_from_slice(b"{\"ok\":true}\n"),
            }
        }
        if !conn.replies.is_empty() {
            if wr.write_all(&conn.replies).await.is_err() {
                break;
            }
            conn.replies.clear();
        }
    }
    conn.dispatch();
    let stats = &ctx.stats;
    tracing::debug!(
        accepted = conn.accepted,
        rejected = conn.rejected,
        lines = conn.line_no,
        "connection closed"
    );
    let _ = stats;
}

impl Conn<'_> {
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
        match protocol::decode_line(line) {
            Ok(Line::Empty) => None,
            Ok(Line::Op(op)) => Some(op),
            Ok(Line::Event(ev)) => {
                let obs = Obs {
                    ts: ev.ts.unwrap_or(self.now),
                    drift_score: ev.drift_score,
                    accuracy: ev.accuracy,
                    error: ev.error,
                    value: ev.value,
                    metrics: ev
                        .metrics
                        .iter()
                        .map(|(k, v)| (Box::<str>::from(k), v))
                        .collect(),
                    meta: ev.meta.map(|m| Box::<str>::from(m.get())),
                };
                let model_id = ev.model_id;
                let handle = match self.known.get(model_id) {
                    Some(h) => h,
                    None => match self.ctx.registry.get_or_create(model_id) {
                        Ok(h) => self.known.entry(model_id.into()).or_insert(h),
                        Err(e @ RegistryError::TooManyModels(_)) => {
                            self.reject(ErrorCode::TooManyModels, &e.to_string());
                            return None;
                        }
                        Err(e) => {
                            tracing::error!(model_id, error = %e, "cannot start the model's actor");
                            self.reject(ErrorCode::Internal, &e.to_string());
                            return None;
                        }
                    },
                };
                match self.pending.get_mut(&handle.id) {
                    Some((_, batch)) => batch.push(obs),
                    None => {
                        self.pending
                            .insert(handle.id.clone(), (handle.clone(), vec![obs]));
                    }
                }
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
        self.replies
            .extend_from_slice(&protocol::error_reply(code, self.line_no, detail));
    }

    /// Sends every pending batch to its model.
    fn dispatch(&mut self) {
        let mut n = 0;
        for (id, (h, batch)) in self.pending.drain() {
            n += batch.len() as u64;
            self.touched.entry(id).or_insert_with(|| {
                (
                    h.addr.clone(),
                    h.epoch.clone(),
                    h.epoch.load(Ordering::SeqCst),
                )
            });
            h.addr.do_send(ApplyBatch(batch));
        }
        self.ctx.stats.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// The flush barrier; returns the reply line.
    async fn barrier(&mut self) -> Vec<u8> {
        self.dispatch();
        let mut failure: Option<String> = None;
        // Models whose state may not be durable stay touched, so the next flush on this
        // connection asks them again instead of answering a false ok.
        let mut retry = HashMap::new();
        for (id, (addr, epoch, seen)) in std::mem::take(&mut self.touched) {
            match addr.send(Barrier).await {
                Ok(Ok(())) if epoch.load(Ordering::SeqCst) != seen => {
                    tracing::error!(model_id = %id, "model actor restarted since this connection's last barrier");
                    failure.get_or_insert_with(|| {
                        format!("model {id}: {}", crate::model::ModelError::Restarted)
                    });
                }
                Ok(Ok(())) => {
                    retry.insert(id, (addr, epoch, seen));
                }
                Ok(Err(e)) => {
                    tracing::error!(model_id = %id, error = %e, "flush barrier failed for a model");
                    failure.get_or_insert_with(|| format!("model {id}: {e}"));
                    retry.insert(id, (addr, epoch, seen));
                }
                Err(e) => {
                    tracing::error!(model_id = %id, error = %e, "model actor unreachable at a flush barrier");
                    failure.get_or_insert_with(|| format!("model {id}: actor unreachable"));
                }
            }
        }
        if failure.is_none()
            && let Err(e) = self.ctx.store.flush().await
        {
            tracing::error!(error = %e, "state store flush failed");
            failure = Some(format!("state store flush failed: {e}"));
        }
        if failure.is_some() {
            for (id, t) in retry {
                self.touched.entry(id).or_insert(t);
            }
        }
        match failure {
            None => protocol::flush_reply(self.accepted, self.rejected),
            Some(detail) => protocol::flush_error_reply(ErrorCode::Internal, &detail),
        }
    }
}
