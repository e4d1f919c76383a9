//! Streaming drift detectors, one per file, each a plain struct with `update(x) -> Signal`.
//!
//! They agree with River 0.26.1 (same drift and warning indices on the conformance streams in
//! `tests/fixtures/conformance/`), and their whole state is serde-serializable so that the
//! store can persist it and a restored detector continues exactly where it stopped.
//!
//! Architecture invariant: nothing here does I/O or reads a clock.

use serde::{Deserialize, Serialize};

/// What one update concluded. After `Drift` a detector resets itself lazily on its next update,
/// as River's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    None,
    Warning,
    Drift,
}

impl Signal {
    /// The signal River's two flags amount to: drift wins over a warning set at the same time.
    pub fn from_flags(drift: bool, warning: bool) -> Signal {
        if drift {
            Signal::Drift
        } else if warning {
            Signal::Warning
        } else {
            Signal::None
        }
    }
}

/// A detector parameter out of range; `key` is the parameter's name (config prefixes the path).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ParamError {
    pub key: &'static str,
    pub message: String,
}

pub mod adwin;
pub mod cusum;
pub mod ddm;
pub mod eddm;
pub mod hddm_a;
pub mod hddm_w;
pub mod kswin;
pub mod page_hinkley;

use adwin::{Adwin, AdwinParams};
use cusum::{Cusum, CusumParams};
use ddm::{Ddm, DdmParams};
use eddm::{Eddm, EddmParams};
use hddm_a::{HddmA, HddmAParams};
use hddm_w::{HddmW, HddmWParams};
use kswin::{Kswin, KswinParams};
use page_hinkley::{PageHinkley, PageHinkleyParams};

/// Generates the closed set of detector kinds once, so that adding a detector is one line here
/// and every dispatch (parse, validate, build, update) stays in step.
macro_rules! detectors {
    ($($variant:ident($det:ident, $params:ident) = $kind:literal, $river:literal, warning: $warn:literal;)*) => {
        /// Any detector's full state, as the store persists it.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Detector {
            $($variant($det),)*
        }

        /// Any detector's parameters, as validated from the config.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum DetectorParams {
            $($variant($params),)*
        }

        /// The config's kind names of every streaming detector.
        pub const KINDS: &[&str] = &[$($kind,)*];

        /// The config kind that corresponds to River's class name (`ADWIN` is `adwin`).
        pub fn kind_from_river(name: &str) -> Option<&'static str> {
            match name {
                $($river => Some($kind),)*
                _ => None,
            }
        }

        impl DetectorParams {
            /// Parses the parameters of `kind` from any self-describing value (a TOML table
            /// in the config, a JSON object in the conformance fixtures). `Ok(None)` when
            /// `kind` is not a detector.
            pub fn parse<'de, D: serde::Deserializer<'de>>(kind: &str, value: D) -> Result<Option<Self>, D::Error> {
                Ok(match kind {
                    $($kind => Some(Self::$variant($params::deserialize(value)?)),)*
                    _ => None,
                })
            }

            pub fn validate(&self) -> Result<(), ParamError> {
                match self {
                    $(Self::$variant(p) => p.validate(),)*
                }
            }

            /// A fresh detector with these parameters.
            pub fn build(&self) -> Detector {
                match self {
                    $(Self::$variant(p) => Detector::$variant($det::new(p.clone())),)*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $kind,)*
                }
            }

            /// Whether the detector has a warning zone (DDM, EDDM, HDDM_A, HDDM_W).
            pub fn has_warning(&self) -> bool {
                match self {
                    $(Self::$variant(_) => $warn,)*
                }
            }
        }

        impl Detector {
            pub fn update(&mut self, x: f64) -> Signal {
                match self {
                    $(Self::$variant(d) => d.update(x),)*
                }
            }

            /// Whether this detector was built from `params` (state is kept across a reload
            /// only when it was).
            pub fn matches(&self, params: &DetectorParams) -> bool {
                match (self, params) {
                    $((Self::$variant(d), DetectorParams::$variant(p)) => d.params() == p,)*
                    #[allow(unreachable_patterns)]
                    _ => false,
                }
            }

            /// One short line for operators.
            pub fn summary(&self) -> String {
                match self {
                    $(Self::$variant(d) => d.summary(),)*
                }
            }
        }
    };
}

detectors! {
    Adwin(Adwin, AdwinParams) = "adwin", "ADWIN", warning: false;
    PageHinkley(PageHinkley, PageHinkleyParams) = "page_hinkley", "PageHinkley", warning: false;
    Kswin(Kswin, KswinParams) = "kswin", "KSWIN", warning: false;
    Ddm(Ddm, DdmParams) = "ddm", "DDM", warning: true;
    Eddm(Eddm, EddmParams) = "eddm", "EDDM", warning: true;
    HddmA(HddmA, HddmAParams) = "hddm_a", "HDDM_A", warning: true;
    HddmW(HddmW, HddmWParams) = "hddm_w", "HDDM_W", warning: true;
    Cusum(Cusum, CusumParams) = "cusum", "CUSUM", warning: false;
}

impl Detector {
    /// River's `warning_detected` after the last update. It can be true on the same update
    /// that flagged drift (EDDM does this), which a single [`Signal`] cannot say.
    pub fn warning_detected(&self) -> bool {
        match self {
            Detector::Ddm(d) => d.warning_detected(),
            Detector::Eddm(d) => d.warning_detected(),
            Detector::HddmA(d) => d.warning_detected(),
            Detector::HddmW(d) => d.warning_detected(),
            _ => false,
        }
    }
}
