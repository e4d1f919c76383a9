//! The job journal: the `jobs` tree, keyed by job id (u64 big-endian, so sled's order is the
//! jobs' order), newest first when read, pruned to a bound; and the `receipts` tree beside it
//! (same keys), the receipts retrain hooks wrote, pruned with their jobs. The receipts tree came
//! without a schema version bump: an older store opens with no receipts, and the build before
//! ignores the tree. The `probation` tree (same keys) holds each retrain's probation, pruned
//! with its job, and came the same way.

use super::codec::decode;
use super::handles::TreeId;
use super::{Job, ProbationRecord, Store, StoreError, valid_id};

impl Store {
    /// A fresh job id, unique across restarts.
    pub fn next_job_id(&self) -> Result<u64, StoreError> {
        // sled's generate_id is monotonic and crash-safe; +1 keeps 0 free as "no job".
        let h = self.handles()?;
        Ok(self.sled(h.db.generate_id())? + 1)
    }

    pub fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(TreeId::Jobs, &job.job_id.to_be_bytes(), job)
            .map(drop)
    }

    pub fn load_job(&self, job_id: u64) -> Result<Option<Job>, StoreError> {
        Ok(self
            .get(TreeId::Jobs, &job_id.to_be_bytes())?
            .map(|(j, _)| j))
    }

    /// Stores a retrain hook's receipt (one JSON object, checked by the caller) with its job;
    /// it goes when the job is pruned from the journal.
    pub fn save_receipt(&self, job_id: u64, receipt: &str) -> Result<(), StoreError> {
        self.put(TreeId::Receipts, &job_id.to_be_bytes(), &receipt.to_owned())
            .map(drop)
    }

    /// The receipt a job's retrain hook wrote, if any.
    pub fn receipt(&self, job_id: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .get::<String>(TreeId::Receipts, &job_id.to_be_bytes())?
            .map(|(r, _)| r))
    }

    /// Stores a retrain's probation with its job; it goes when the job is pruned.
    pub fn save_probation(&self, job_id: u64, p: &ProbationRecord) -> Result<(), StoreError> {
        self.put(TreeId::Probation, &job_id.to_be_bytes(), p)
            .map(drop)
    }

    /// A retrain's probation, if it had one.
    pub fn probation(&self, job_id: u64) -> Result<Option<ProbationRecord>, StoreError> {
        Ok(self
            .get(TreeId::Probation, &job_id.to_be_bytes())?
            .map(|(r, _)| r))
    }

    /// Every stored probation, oldest first, with its job id.
    pub fn probations(&self) -> Result<Vec<(u64, ProbationRecord)>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        for kv in h.probation.iter() {
            let (k, v) = self.sled(kv)?;
            let Ok(key) = <[u8; 8]>::try_from(&k[..]) else {
                continue;
            };
            out.push((
                u64::from_be_bytes(key),
                decode(&format!("probation/{k:?}"), &v)?,
            ));
        }
        Ok(out)
    }

    /// Jobs, newest first, optionally for one model, at most `limit`.
    pub fn jobs(&self, model_id: Option<&str>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for kv in h.jobs.iter().rev() {
            let (k, v) = self.sled(kv)?;
            let job: Job = decode(&format!("jobs/{k:?}"), &v)?;
            if !valid_id(job.model_id.as_bytes()) {
                continue;
            }
            if model_id.is_none_or(|m| m == job.model_id) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Keeps the newest `keep` jobs and deletes older ones, so the journal stays bounded.
    pub fn prune_jobs(&self, keep: usize) -> Result<usize, StoreError> {
        let h = self.handles()?;
        let n = h.jobs.len();
        let mut removed = 0;
        if n > keep {
            self.check_fault()?;
            for kv in h.jobs.iter().take(n - keep) {
                let (k, _) = self.sled(kv)?;
                self.sled(h.jobs.remove(&k))?;
                self.remember(TreeId::Jobs, &k, None);
                if self.sled(h.receipts.remove(&k))?.is_some() {
                    self.remember(TreeId::Receipts, &k, None);
                }
                if self.sled(h.probation.remove(&k))?.is_some() {
                    self.remember(TreeId::Probation, &k, None);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Job, Store};

    #[test]
    fn jobs_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        for i in 0..5 {
            let id = s.next_job_id().unwrap();
            let job = Job::new(
                id,
                if i % 2 == 0 { "a" } else { "b" },
                crate::policy::Action::Full,
                "p",
                "r",
                "{}".into(),
                0.0,
            );
            s.save_job(&job).unwrap();
        }
        let all = s.jobs(None, 10).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].job_id > w[1].job_id));
        assert_eq!(s.jobs(Some("a"), 10).unwrap().len(), 3);
        assert_eq!(s.prune_jobs(2).unwrap(), 3);
        assert_eq!(s.jobs(None, 10).unwrap().len(), 2);
    }
}
