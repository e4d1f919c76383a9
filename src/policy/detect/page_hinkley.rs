//! Temporary stand-in (replaced by the real detector).
use super::{ParamError, Signal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageHinkleyParams {
    pub min_instances: u32,
    pub delta: f64,
    pub threshold: f64,
    pub alpha: f64,
}

impl Default for PageHinkleyParams {
    fn default() -> Self {
        Self {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 0.9999,
        }
    }
}

impl PageHinkleyParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    params: PageHinkleyParams,
}

impl PageHinkley {
    pub fn new(params: PageHinkleyParams) -> Self {
        Self { params }
    }
    pub fn update(&mut self, _x: f64) -> Signal {
        Signal::None
    }
    pub fn params(&self) -> &PageHinkleyParams {
        &self.params
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
