//! A connection's way to the models: the dispatch of its pending events (one shared array
//! sorted by model, one message per model) and the flush barrier.

use std::sync::atomic::Ordering;

use super::*;

impl Conn {
    /// Sends every pending event to its model: one shared array sorted by model, one message
    /// per model.
    pub(super) fn dispatch(&mut self) {
        let n = self.pending.len();
        if n == 0 {
            return;
        }
        while let Ok(array) = self.returned.try_recv() {
            self.take_back(array);
        }
        let Conn {
            slots,
            pending,
            active,
            touched,
            ..
        } = self;
        // A stable counting sort by slot.
        for &(s, _) in pending.iter() {
            let slot = &mut slots[s as usize];
            if slot.count == 0 {
                active.push(s);
            }
            slot.count += 1;
        }
        let mut at = 0;
        for &s in active.iter() {
            let slot = &mut slots[s as usize];
            let c = slot.count;
            slot.count = at;
            at += c;
        }
        let mut sorted = self.spare.pop().unwrap_or_default();
        sorted.resize_with(n, Obs::default);
        for (s, obs) in pending.drain(..) {
            let slot = &mut slots[s as usize];
            sorted[slot.count as usize] = obs;
            slot.count += 1;
        }
        let events = Arc::new(EventArray::new(sorted, self.home.clone()));
        self.in_flight += 1;
        self.dispatches += 1;
        self.messages += active.len() as u64;
        // A few models' batches go to the models' thread as one task, which puts each in its
        // actor's mailbox there: one wake-up of that thread per dispatch, where a message per
        // model from this thread could wake it once per model (a paced load of a few models).
        // Many models' batches (a bulk load) are sent from here, so this thread, not the
        // models' thread, spends the time on the mailboxes; so is a single batch. Per-model
        // order holds either way: a direct send is taken only while no task of this
        // connection is waiting to run (the thread runs its tasks in order), and a barrier
        // (see `barrier`) waits for a task queued behind the dispatches first.
        let direct = (self.on_models || active.len() <= 1 || active.len() > FANOUT_MAX_MODELS)
            && self.fanouts.load(Ordering::Acquire) == 0;
        let mut start = 0;
        let mut batches = Vec::with_capacity(if direct { 0 } else { active.len() });
        for s in active.drain(..) {
            let slot = &mut slots[s as usize];
            // `count` is now the end of this model's range, which starts where the last ended.
            let end = slot.count as usize;
            slot.count = 0;
            if slot.touched.is_none() {
                slot.touched = Some(slot.handle.epoch.load(Ordering::SeqCst));
                touched.push(s);
            }
            if direct {
                slot.handle.addr.do_send(ApplyBatch {
                    events: events.clone(),
                    range: start..end,
                });
            } else {
                batches.push((slot.handle.addr.clone(), start..end));
            }
            start = end;
        }
        if !direct {
            let fanouts = self.fanouts.clone();
            fanouts.fetch_add(1, Ordering::AcqRel);
            let queued = self.ctx.registry.arbiter().spawn_fn(move || {
                for (addr, range) in batches {
                    addr.do_send(ApplyBatch {
                        events: events.clone(),
                        range,
                    });
                }
                fanouts.fetch_sub(1, Ordering::AcqRel);
            });
            if !queued {
                // The models' thread is gone (shutdown): nothing will run the task.
                self.fanouts.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.rate_events += n as u64;
        self.bulk |= n >= BULK_EVENTS;
        self.ctx
            .stats
            .accepted
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A dispatch array came back from the models.
    pub(super) fn take_back(&mut self, array: Vec<Obs>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.spare.len() < SPARE_ARRAYS {
            self.spare.push(array);
        }
    }

    pub(super) fn holds_batch_memory(&self) -> bool {
        !self.spare.is_empty() || self.pending.capacity() > IDLE_EVENTS
    }

    pub(super) fn release_batch_memory(&mut self) {
        self.spare.clear();
        self.pending.shrink_to(IDLE_EVENTS);
    }

    /// The flush barrier; appends the reply line to `replies`.
    pub(super) async fn barrier(&mut self) {
        self.dispatch();
        // The batches go through the models' thread's task queue (see `dispatch`): a task
        // queued behind them has run only once every one is in its actor's mailbox, so each
        // barrier below arrives after this connection's events.
        if !self.touched.is_empty() && self.fanouts.load(Ordering::Acquire) > 0 {
            self.ctx.registry.models_caught_up().await;
        }
        // Every barrier is in its model's mailbox before the first is awaited, so the models
        // write their state in parallel with the waiting rather than one round trip each.
        let requests: Vec<_> = self
            .touched
            .drain(..)
            .map(|s| {
                let slot = &mut self.slots[s as usize];
                let seen = slot.touched.take();
                let h = &slot.handle;
                (s, h.id.clone(), h.epoch.clone(), seen, h.addr.send(Barrier))
            })
            .collect();
        let mut failure: Option<String> = None;
        // Models whose state may not be durable stay touched, so the next flush on this
        // connection asks them again instead of answering a false ok.
        let mut retry = Vec::new();
        for (s, id, epoch, seen, request) in requests {
            match request.await {
                Ok(Ok(())) if Some(epoch.load(Ordering::SeqCst)) != seen => {
                    tracing::error!(model_id = %id, "model actor restarted since this connection's last barrier");
                    failure.get_or_insert_with(|| {
                        format!("model {id}: {}", crate::model::ModelError::Restarted)
                    });
                }
                Ok(Ok(())) => retry.push((s, seen)),
                Ok(Err(e)) => {
                    tracing::error!(model_id = %id, error = %e, "flush barrier failed for a model");
                    failure.get_or_insert_with(|| format!("model {id}: {e}"));
                    retry.push((s, seen));
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
            for (s, seen) in retry {
                let slot = &mut self.slots[s as usize];
                if slot.touched.is_none() {
                    slot.touched = seen;
                    self.touched.push(s);
                }
            }
        }
        match failure {
            None => protocol::write_flush_reply_dropped(
                &mut self.replies,
                self.accepted,
                self.rejected,
                self.replies_dropped,
            ),
            Some(detail) => {
                protocol::write_flush_error_reply(&mut self.replies, ErrorCode::Internal, &detail)
            }
        }
    }
}
