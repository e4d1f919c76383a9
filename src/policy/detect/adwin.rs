//! Temporary stand-in (replaced by the real detector).
use super::{ParamError, Signal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdwinParams {
    pub delta: f64,
    pub clock: u32,
    pub max_buckets: u32,
    pub min_window_length: u32,
    pub grace_period: u32,
}

impl Default for AdwinParams {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

impl AdwinParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    params: AdwinParams,
}

impl Adwin {
    pub fn new(params: AdwinParams) -> Self {
        Self { params }
    }
    pub fn update(&mut self, _x: f64) -> Signal {
        Signal::None
    }
    pub fn params(&self) -> &AdwinParams {
        &self.params
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
