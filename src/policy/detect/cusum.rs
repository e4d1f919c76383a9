//! Temporary stand-in (replaced by the real detector).
use super::{ParamError, Signal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CusumParams {
    pub target: Option<f64>,
    pub k: f64,
    pub h: f64,
}

impl Default for CusumParams {
    fn default() -> Self {
        Self {
            target: None,
            k: 0.5,
            h: 5.0,
        }
    }
}

impl CusumParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    params: CusumParams,
}

impl Cusum {
    pub fn new(params: CusumParams) -> Self {
        Self { params }
    }
    pub fn update(&mut self, _x: f64) -> Signal {
        Signal::None
    }
    pub fn params(&self) -> &CusumParams {
        &self.params
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
