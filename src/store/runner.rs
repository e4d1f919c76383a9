//! The hook runner's per-model records (cooldown, pause, budget, loop guard) in the `runner`
//! tree, keyed by model id.

use super::handles::TreeId;
use super::{RunnerRecord, Store, StoreError};

impl Store {
    pub fn load_runner(&self, model_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        Ok(self
            .get(TreeId::Runner, model_id.as_bytes())?
            .map(|(r, _)| r))
    }

    pub fn save_runner(&self, model_id: &str, record: &RunnerRecord) -> Result<(), StoreError> {
        self.put(TreeId::Runner, model_id.as_bytes(), record)
            .map(drop)
    }

    pub fn runners(&self) -> impl Iterator<Item = Result<(String, RunnerRecord), StoreError>> + '_ {
        self.records(TreeId::Runner)
    }
}
