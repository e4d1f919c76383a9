//! The command actor's messages: decisions, operator requests, hook results, status and
//! lifecycle.

use super::*;

impl Actor for CommandActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_probations();
        self.reconcile(ctx);
    }
}

impl Handler<ProbationVerdict> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: ProbationVerdict, ctx: &mut Context<Self>) {
        self.verdict(msg, ctx);
    }
}

impl Handler<Promote> for CommandActor {
    type Result = Result<u64, CommandError>;

    fn handle(&mut self, msg: Promote, ctx: &mut Context<Self>) -> Self::Result {
        self.promote(&msg.model_id, ctx)
    }
}

impl Handler<Decision> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: Decision, ctx: &mut Context<Self>) {
        if let Err(error) = self.decide(msg, ctx) {
            tracing::error!(error = %error, "cannot act on a decision");
        }
    }
}

impl Handler<RollBack> for CommandActor {
    type Result = Result<u64, CommandError>;

    fn handle(&mut self, msg: RollBack, ctx: &mut Context<Self>) -> Self::Result {
        self.rollback(&msg.model_id, ctx)
    }
}

impl Handler<Trigger> for CommandActor {
    type Result = Result<u64, CommandError>;

    fn handle(&mut self, msg: Trigger, ctx: &mut Context<Self>) -> Self::Result {
        let action = msg.0.action;
        self.decide(msg.0, ctx)?.ok_or(CommandError::NoHook(action))
    }
}

impl Handler<HookFinished> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: HookFinished, ctx: &mut Context<Self>) {
        self.finish(msg, ctx);
    }
}

impl Handler<SetPaused> for CommandActor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: SetPaused, _ctx: &mut Context<Self>) -> Self::Result {
        let now = Now::read();
        self.ensure_runner(&msg.model_id, now);
        self.sched.runner(&msg.model_id).paused = msg.paused;
        let rec = self.sched.runner_record(&msg.model_id, now);
        self.store.save_runner(&msg.model_id, &rec)?;
        self.store.flush_sync()?;
        tracing::info!(model_id = %msg.model_id, paused = msg.paused, "pause state changed");
        Ok(())
    }
}

impl Handler<ForgetRunner> for CommandActor {
    type Result = Result<(), CommandError>;

    fn handle(&mut self, msg: ForgetRunner, _ctx: &mut Context<Self>) -> Self::Result {
        let model = msg.model_id.as_str();
        self.sched
            .forget(model)
            .map_err(|(job_id, state)| CommandError::JobActive {
                model: model.into(),
                job_id,
                state,
            })?;
        // The store's copy goes with the model's state (`Store::forget_model`).
        self.log.forget(model);
        self.probation_forgotten(model);
        Ok(())
    }
}

impl Handler<GetExplain> for CommandActor {
    type Result = Result<Vec<(u64, ExplainEntry)>, CommandError>;

    fn handle(&mut self, msg: GetExplain, _ctx: &mut Context<Self>) -> Self::Result {
        let mut entries = self.store.explain_entries(&msg.model_id, msg.limit)?;
        self.log.overlay(&msg.model_id, &mut entries);
        Ok(entries)
    }
}

impl Handler<GetStatus> for CommandActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        // Paused models may not be cached yet: the store is the truth.
        let mut paused: Vec<String> = self
            .store
            .runners()
            .filter_map(Result::ok)
            .filter(|(_, r)| r.paused)
            .map(|(k, _)| k)
            .collect();
        paused.sort();
        MessageResult(RunnerStatus {
            running: self.sched.running_count(),
            queued: self.sched.queued_count(),
            paused,
            jobs_by_outcome: self
                .outcomes
                .iter()
                .fold(HashMap::new(), |mut m, ((_, o), n)| {
                    *m.entry(*o).or_default() += n;
                    m
                }),
            jobs_by_action: {
                let mut v: Vec<_> = self.outcomes.iter().map(|(k, n)| (*k, *n)).collect();
                v.sort();
                v
            },
            hook_durations: self.hook_durations.clone(),
            on_probation: self.on_probation.len(),
            probations: ["promoted", "rolled_back", "inconclusive", "superseded"]
                .into_iter()
                .map(|o| (o, self.probation_outcomes.get(o).copied().unwrap_or(0)))
                .collect(),
        })
    }
}

impl Handler<Reconfigure> for CommandActor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        self.sched.reconfigure(msg.0);
        self.pump(ctx);
    }
}

impl Handler<Shutdown> for CommandActor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) {
        let now = Now::read();
        // The decision logs' running counts, for the flush that follows.
        let writes = self.log.take_due(now.boot, true);
        self.write_log(writes);
        let jobs: Vec<Job> = self.sched.drain_running();
        // Every group gets SIGTERM at once and one grace period is shared, so a stop takes
        // the grace once however many hooks run.
        let groups: Vec<i32> = jobs.iter().filter_map(|j| j.pgid).collect();
        for job in &jobs {
            if let Some(pgid) = job.pgid {
                tracing::warn!(model_id = %job.model_id, job_id = job.job_id, pgid, "stopping a running hook for shutdown");
                hook::kill_group(pgid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + hook::KILL_GRACE;
        while groups.iter().any(|&g| hook::group_running(g)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pgid in &groups {
            hook::kill_group(pgid, libc::SIGKILL);
        }
        for job in jobs {
            // The retry, if any, is journaled `queued`: the next start runs it.
            self.interrupt(job, "interrupted by daemon shutdown", now);
        }
    }
}

impl Handler<Ping> for CommandActor {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}
