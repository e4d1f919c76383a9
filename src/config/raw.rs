//! The raw stage: TOML text into a table, and a walker that takes keys out of a table one by
//! one, checks each value's type, and reports every key nobody took as unknown, with the key
//! it most likely misspells. Problems are collected with their key paths, never returned
//! early: `check-config` shows them all at once.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{ConfigError, KeyError};

/// `e` as [`ConfigError::Parse`]: 1-based line and column (in characters) of where it starts.
pub(super) fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |r| r.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Parse {
        line,
        column,
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// `unknown key`, with the known key `key` most likely misspells.
pub(super) fn unknown_key<'k>(
    path: String,
    key: &str,
    known: impl Iterator<Item = &'k str>,
) -> KeyError {
    match did_you_mean(key, known) {
        Some(k) => KeyError::new(path, format!("unknown key; did you mean {k:?}?")),
        None => KeyError::new(path, "unknown key"),
    }
}

/// The candidate closest to `key` by edit distance (a transposition counts as one edit), if
/// it is close enough to be a typo: at most 2 edits, and fewer than half of `key`'s length
/// (so that `x` is not taken for `k`).
fn did_you_mean<'k>(key: &str, candidates: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    candidates
        .filter(|c| *c != key)
        .map(|c| (edit_distance(key, c), c))
        .filter(|&(d, _)| d <= 2 && 2 * d < key.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each count as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A serde message as one line: `invalid type: string "x", expected f64` reads
/// `expected a number, got string "x"`; Rust type names become what a config writer knows.
pub(super) fn serde_message(raw: &str) -> String {
    let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let plain = |expected: &str| -> String {
        // toml adds the key (`expected f64 in `k``), which the path already names.
        let expected = match expected.rsplit_once(" in `") {
            Some((e, key)) if key.ends_with('`') => e,
            _ => expected,
        };
        match expected.trim() {
            "f64" | "f32" => "a number".into(),
            "u8" => format!("an integer between 0 and {}", u8::MAX),
            "u16" => format!("an integer between 0 and {}", u16::MAX),
            "u32" => format!("an integer between 0 and {}", u32::MAX),
            "u64" | "usize" => format!("an integer between 0 and {}", u64::MAX),
            "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
            "a boolean" | "bool" => "a boolean".into(),
            other => other.to_owned(),
        }
    };
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = one_line.strip_prefix(lead)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, got {got}", plain(expected));
        }
    }
    one_line
}

/// Takes keys out of one table, type-checks them, and reports what is left as unknown.
pub(super) struct Walker<'a> {
    table: &'a toml::Table,
    seen: BTreeSet<String>,
    /// Keys of the same table another walker takes (a policy's common keys, beside its
    /// kind's): suggested for a misspelt key, never reported.
    pub(super) also_known: &'static [&'static str],
    pub(super) prefix: String,
    pub(super) errors: &'a mut Vec<KeyError>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(
        table: &'a toml::Table,
        prefix: String,
        errors: &'a mut Vec<KeyError>,
    ) -> Self {
        Walker {
            table,
            seen: BTreeSet::new(),
            also_known: &[],
            prefix,
            errors,
        }
    }

    pub(super) fn key_path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(super) fn error(&mut self, key: &str, message: String) {
        let path = self.key_path(key);
        self.errors.push(KeyError { path, message });
    }

    pub(super) fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.seen.insert(key.to_owned());
        self.table.get(key)
    }

    pub(super) fn typed<T>(
        &mut self,
        key: &str,
        what: &str,
        f: impl FnOnce(&toml::Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let r = f(v);
        if r.is_none() {
            self.error(key, format!("expected {what}, got {}", v.type_str()));
        }
        r
    }

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if s.is_empty() {
            self.error(key, "must not be empty".into());
            return None;
        }
        Some(PathBuf::from(s))
    }

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        self.typed(key, "a boolean", toml::Value::as_bool)
    }

    pub(super) fn int(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.typed(key, "an integer", toml::Value::as_integer)?;
        if v < 0 || (v as u64) < min || (v as u64) > max {
            self.error(key, format!("must be between {min} and {max}, got {v}"));
            return None;
        }
        Some(v as u64)
    }

    pub(super) fn float(&mut self, key: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.typed(key, "a number", |v| {
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        })?;
        if !v.is_finite() || v < min || v > max {
            self.error(
                key,
                format!("must be a finite number between {min} and {max}, got {v}"),
            );
            return None;
        }
        Some(v)
    }

    pub(super) fn string_array(&mut self, key: &str) -> Option<Vec<String>> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    }

    /// A sub-table; missing is an empty table.
    pub(super) fn table(&mut self, key: &str) -> toml::Table {
        self.opt_table(key).unwrap_or_default()
    }

    pub(super) fn opt_table(&mut self, key: &str) -> Option<toml::Table> {
        self.typed(key, "a table", |v| v.as_table().cloned())
    }

    pub(super) fn array(&mut self, key: &str) -> Option<Vec<toml::Value>> {
        self.typed(key, "an array of tables", |v| v.as_array().cloned())
    }

    /// Reports every key that nobody took, with the known key it most likely meant.
    pub(super) fn finish(self) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                let known = self.seen.iter().map(String::as_str);
                let error = unknown_key(
                    self.key_path(key),
                    key,
                    known.chain(self.also_known.iter().copied()),
                );
                self.errors.push(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::errors_of;

    /// Issue 12.6: a misspelt key names the key it most likely meant, in every table.
    #[test]
    fn unknown_keys_get_a_did_you_mean() {
        let errs = errors_of(
            "[deamon]\n[hooks]\ncooldwon_s = 1\n[metrics]\nintervals = 3\n[[models]]\nmacth = \"*\"\n[[models.policies]]\nkind = \"drift_window\"\ntreshold = 0.3\nmetirc = \"error\"\n[[models.policies]]\nkind = \"adwin\"\ndetla = 0.1\nactoin = \"full\"\nx = 1\n",
        );
        assert_eq!(
            errs,
            [
                "deamon: unknown key; did you mean \"daemon\"?",
                "hooks.cooldwon_s: unknown key; did you mean \"cooldown_s\"?",
                "metrics.intervals: unknown key; did you mean \"interval_s\"?",
                "models[0].macth: unknown key; did you mean \"match\"?",
                "models[0].policies[0].metirc: unknown key; did you mean \"metric\"?",
                "models[0].policies[0].treshold: unknown key; did you mean \"threshold\"?",
                "models[0].policies[1].actoin: unknown key; did you mean \"action\"?",
                "models[0].policies[1].detla: unknown key; did you mean \"delta\"?",
                "models[0].policies[1].x: unknown key",
            ]
        );
        assert_eq!(edit_distance("treshold", "threshold"), 1);
        assert_eq!(edit_distance("detla", "delta"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(did_you_mean("k", ["h"].into_iter()), None);
        assert_eq!(did_you_mean("zzzzzz", ["delta"].into_iter()), None);
    }

    #[test]
    fn serde_messages_are_one_line_in_plain_words() {
        assert_eq!(
            serde_message("invalid type: string \"x\", expected f64 in `k`\n"),
            "expected a number, got string \"x\""
        );
        assert_eq!(
            serde_message("invalid value: integer `-1`, expected u32"),
            "expected an integer between 0 and 4294967295, got integer `-1`"
        );
        assert_eq!(
            serde_message("unknown variant `up`, expected one of `both`, `up`\n  x"),
            "unknown variant `up`, expected one of `both`, `up` x"
        );
    }
}
