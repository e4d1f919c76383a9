//! Temporary stand-in (replaced by the real detector).
use super::{ParamError, Signal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KswinParams {
    pub alpha: f64,
    pub window_size: u32,
    pub stat_size: u32,
    pub seed: Option<u64>,
}

impl Default for KswinParams {
    fn default() -> Self {
        Self {
            alpha: 0.005,
            window_size: 100,
            stat_size: 30,
            seed: None,
        }
    }
}

impl KswinParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kswin {
    params: KswinParams,
}

impl Kswin {
    pub fn new(params: KswinParams) -> Self {
        Self { params }
    }
    pub fn update(&mut self, _x: f64) -> Signal {
        Signal::None
    }
    pub fn params(&self) -> &KswinParams {
        &self.params
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
