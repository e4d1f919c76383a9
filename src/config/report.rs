//! What `check-config` says of a config that validated: the settings that load but cannot
//! work as meant (a rule shadowed by an earlier one, a threshold that always fires), and a
//! summary for people and for tools.

use super::{Config, HookSpec, KeyError, glob_match};
use crate::policy::{Direction, PolicyKind, PolicySpec};

impl Config {
    /// Settings that load but cannot work as meant (each with its key path): `check-config`
    /// prints them, the daemon logs them at start and reload.
    pub fn warnings(&self) -> Vec<KeyError> {
        // Deprecated forms found while loading come first.
        let mut out = self.warnings.clone();
        if self.hooks.promote.is_some() && self.models.iter().all(|r| r.probation.is_none()) {
            out.push(KeyError::new(
                "hooks.promote".to_owned(),
                "no model rule has a [models.probation] table, so the promote hook never runs (a retrain is promoted at the end of its probation, or by `visutility promote`)".to_owned(),
            ));
        }
        for (i, rule) in self.models.iter().enumerate() {
            if rule.probation.is_some() && self.hooks.rollback.is_none() {
                out.push(KeyError::new(
                    format!("models[{i}].probation"),
                    "no [hooks] rollback: a retrain that fails its probation is recorded as rolled back and escalated, and nothing undoes it".to_owned(),
                ));
            }
        }
        for (j, rule) in self.models.iter().enumerate() {
            let earlier = self.models[..j].iter().enumerate();
            if let Some((i, first)) = earlier
                .into_iter()
                .find(|(_, e)| glob_covers(&e.pattern, &rule.pattern))
            {
                out.push(KeyError::new(
                    format!("models[{j}].match"),
                    format!(
                        "this rule is never used: every id {:?} matches is matched first by models[{i}] (match = {:?}), and the first match wins; move it above",
                        rule.pattern, first.pattern
                    ),
                ));
            }
        }
        for (i, rule) in self.models.iter().enumerate() {
            for (j, spec) in rule.policies.iter().enumerate() {
                let path = format!("models[{i}].policies[{j}]");
                let accuracy = spec.metric == "accuracy";
                match &spec.kind {
                    PolicyKind::DriftWindow {
                        threshold,
                        direction: Direction::Above,
                        ..
                    } if accuracy && *threshold < 1.0 => out.push(KeyError::new(
                        format!("{path}.direction"),
                        format!(
                            "a window of accuracy fires while its mean is above {threshold}, which is nearly always; for \"mean accuracy below {threshold}\" set direction = \"below\""
                        ),
                    )),
                    PolicyKind::StaticThreshold {
                        min_accuracy: Some(m),
                        ..
                    } if *m > 1.0 => out.push(KeyError::new(
                        format!("{path}.min_accuracy"),
                        format!("accuracy is at most 1, so min_accuracy = {m} fires on every event"),
                    )),
                    PolicyKind::StaticThreshold { min: Some(m), .. } if accuracy && *m > 1.0 => {
                        out.push(KeyError::new(
                            format!("{path}.min"),
                            format!("accuracy is at most 1, so min = {m} fires on every event"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// A short human summary (what `check-config` prints).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let src = self
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        s.push_str(&format!("config: {src}\n"));
        s.push_str(&format!(
            "ingest socket: {}\n",
            self.daemon.socket.display()
        ));
        s.push_str(&format!(
            "control socket: {}\n",
            self.daemon.control_socket.display()
        ));
        s.push_str(&format!("state dir: {}\n", self.daemon.state_dir.display()));
        if let Some(p) = &self.metrics.textfile {
            s.push_str(&format!(
                "metrics textfile: {} (every {} s)\n",
                p.display(),
                self.metrics.interval_s
            ));
        }
        if let Some(addr) = &self.metrics.listen {
            s.push_str(&format!("metrics served at: http://{addr}/metrics\n"));
        }
        for (name, hook) in [
            ("full", &self.hooks.full),
            ("fine_tune", &self.hooks.fine_tune),
            ("escalate", &self.hooks.escalate),
            ("rollback", &self.hooks.rollback),
            ("promote", &self.hooks.promote),
        ] {
            match hook {
                Some(h) => s.push_str(&format!(
                    "hook {name}: {} (timeout {} s)\n",
                    h.command.join(" "),
                    h.timeout_s
                )),
                None => s.push_str(&format!(
                    "hook {name}: none (decisions are recorded only)\n"
                )),
            }
        }
        for rule in &self.models {
            let names: Vec<String> = rule
                .policies
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} on {})",
                        p.name,
                        p.kind.kind_name(),
                        metrics_read(p).join(" and ")
                    )
                })
                .collect();
            let names = if names.is_empty() {
                "no policies".to_owned()
            } else {
                names.join(", ")
            };
            s.push_str(&format!("models {:?}: {names}\n", rule.pattern));
            if let Some(p) = &rule.probation {
                s.push_str(&format!(
                    "models {:?}: probation on {} ({} better), {} values after each retrain, baseline {}, confidence {}, tolerance {}\n",
                    rule.pattern,
                    p.metric,
                    match p.rule.direction {
                        crate::probation::Direction::Higher => "higher",
                        crate::probation::Direction::Lower => "lower",
                    },
                    p.rule.events,
                    p.baseline.as_str(),
                    p.rule.confidence,
                    p.rule.tolerance,
                ));
            }
        }
        s
    }

    /// [`Config::summary`] for tools (`check-config --json`).
    pub fn summary_json(&self) -> serde_json::Value {
        let hook = |h: &Option<HookSpec>| {
            h.as_ref().map_or(
                serde_json::Value::Null,
                |h| serde_json::json!({"command": h.command, "timeout_s": h.timeout_s}),
            )
        };
        let models: Vec<_> = self
            .models
            .iter()
            .map(|rule| {
                let policies: Vec<_> = rule
                    .policies
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "kind": p.kind.kind_name(),
                            "metrics": metrics_read(p),
                        })
                    })
                    .collect();
                serde_json::json!({"match": rule.pattern, "policies": policies})
            })
            .collect();
        serde_json::json!({
            "config": self.source.as_ref().map(|p| p.display().to_string()),
            "socket": self.daemon.socket.display().to_string(),
            "control_socket": self.daemon.control_socket.display().to_string(),
            "state_dir": self.daemon.state_dir.display().to_string(),
            "hooks": {
                "full": hook(&self.hooks.full),
                "fine_tune": hook(&self.hooks.fine_tune),
                "escalate": hook(&self.hooks.escalate),
                "rollback": hook(&self.hooks.rollback),
                "promote": hook(&self.hooks.promote),
            },
            "models": models,
        })
    }
}

/// The metrics a policy reads: its `metric`, or for the classic `static_threshold` the two
/// fixed ones it bounds.
fn metrics_read(spec: &PolicySpec) -> Vec<&str> {
    match &spec.kind {
        PolicyKind::StaticThreshold {
            max_drift,
            min_accuracy,
            ..
        } if max_drift.is_some() || min_accuracy.is_some() => {
            let mut m = Vec::new();
            if max_drift.is_some() {
                m.push("drift_score");
            }
            if min_accuracy.is_some() {
                m.push("accuracy");
            }
            m
        }
        _ => vec![spec.metric.as_str()],
    }
}

/// Whether every id `later` matches is matched by `earlier` too (then a rule with `later`
/// after one with `earlier` is never used). Sound, not complete: `true` only in cases
/// decided exactly (equal patterns, `earlier` all stars, `later` without wildcards,
/// `earlier` a literal prefix or suffix with one `*` that `later` starts or ends with).
fn glob_covers(earlier: &str, later: &str) -> bool {
    let wild = |c: char| c == '*' || c == '?';
    if earlier == later || (!earlier.is_empty() && earlier.chars().all(|c| c == '*')) {
        return true;
    }
    if !later.contains(wild) {
        return glob_match(earlier, later);
    }
    if let Some(prefix) = earlier.strip_suffix('*')
        && !prefix.contains(wild)
    {
        return later
            .get(..prefix.len())
            .is_some_and(|p| p == prefix && !p.contains(wild));
    }
    if let Some(suffix) = earlier.strip_prefix('*')
        && !suffix.contains(wild)
    {
        return later
            .len()
            .checked_sub(suffix.len())
            .and_then(|at| later.get(at..))
            .is_some_and(|s| s == suffix);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;

    /// Issue 12.6: a rule after one that matches every id it matches is dead: warned.
    #[test]
    fn shadowed_rules_are_warned() {
        let c = Config::from_toml(
            "[[models]]\nmatch = \"fraud-*\"\n[[models]]\nmatch = \"*\"\n[[models]]\nmatch = \"fraud-v?\"\n[[models]]\nmatch = \"spam\"\n",
            &env(),
        )
        .unwrap();
        let w: Vec<_> = c.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("models[2].match: this rule is never used")
                && w[0].contains("models[0] (match = \"fraud-*\")"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("models[3].match: ") && w[1].contains("models[1]"),
            "{w:?}"
        );
        // A specific rule first, then a catch-all: nothing to say.
        let c = Config::from_toml(
            "[[models]]\nmatch = \"fraud-*\"\n[[models]]\nmatch = \"*-v1\"\n[[models]]\nmatch = \"*\"\n",
            &env(),
        )
        .unwrap();
        assert_eq!(c.warnings(), []);
    }

    /// `glob_covers` never says yes wrongly: checked against every id over a small alphabet.
    #[test]
    fn glob_covers_is_sound() {
        let patterns = [
            "*", "**", "", "a", "ab", "a*", "ab*", "*b", "*ab", "a?", "?b", "a*b", "*a*", "a**",
            "?", "??*", "b-*", "b-a", "*-a", "a?*",
        ];
        let mut ids = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = frontier
                .iter()
                .flat_map(|s| ["a", "b", "-"].map(|c| format!("{s}{c}")))
                .collect();
            ids.extend(next.iter().cloned());
            frontier = next;
        }
        let mut decided = 0;
        for earlier in patterns {
            for later in patterns {
                if glob_covers(earlier, later) {
                    decided += 1;
                    for id in &ids {
                        assert!(
                            !glob_match(later, id) || glob_match(earlier, id),
                            "{earlier:?} said to cover {later:?}, but {id:?}"
                        );
                    }
                }
            }
        }
        assert!(glob_covers("fraud-*", "fraud-v?") && glob_covers("*", "fraud-*"));
        assert!(glob_covers("*-v1", "fraud*-v1") && glob_covers("a?c", "abc"));
        assert!(!glob_covers("fraud-*", "fraud*") && !glob_covers("a?", "a*"));
        assert!(decided > 40, "{decided}");
    }

    /// Issue 12.6: the summary says which metrics each policy reads.
    #[test]
    fn the_summary_names_the_metric_of_each_policy() {
        let c = Config::from_toml(
            "[[models]]\n[[models.policies]]\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.9\n[[models.policies]]\nkind = \"adwin\"\nmetric = \"latency_ms\"\n",
            &env(),
        )
        .unwrap();
        assert!(
            c.summary().contains(
                "models \"*\": static_threshold (static_threshold on drift_score and accuracy), adwin (adwin on latency_ms)"
            ),
            "{}",
            c.summary()
        );
        let j = c.summary_json();
        assert_eq!(
            j["models"][0]["policies"][1],
            serde_json::json!({"name": "adwin", "kind": "adwin", "metrics": ["latency_ms"]})
        );
        assert_eq!(
            j["models"][0]["policies"][0]["metrics"],
            serde_json::json!(["drift_score", "accuracy"])
        );
    }
}
