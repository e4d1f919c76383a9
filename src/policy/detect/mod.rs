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

            /// Every parameter out of range (config reports them all in one run).
            pub fn validate_all(&self) -> Vec<ParamError> {
                match self {
                    $(Self::$variant(p) => p.validate_all(),)*
                }
            }

            /// The parameter names `kind` accepts (its serde field names), `None` when
            /// `kind` is not a detector. Read from the parameters' own `Deserialize`, so
            /// they cannot drift from what [`DetectorParams::parse`] accepts.
            pub fn names(kind: &str) -> Option<&'static [&'static str]> {
                let mut fields: &'static [&'static str] = &[];
                match kind {
                    $($kind => {
                        // The field list is the point; the error it stops with is not.
                        let _ = $params::deserialize(fields::Fields(&mut fields));
                    })*
                    _ => return None,
                }
                Some(fields)
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

            /// The state as named numbers (see each detector's `state`).
            pub fn state(&self) -> Vec<(&'static str, f64)> {
                match self {
                    $(Self::$variant(d) => d.state(),)*
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

/// Values up to this magnitude cannot take any detector's state past [`STATE_BOUND`]: the
/// largest intermediate is a square (1e100) summed over at most 2^64 updates (1e120). A value
/// beyond it is checked (see [`Detector::update_finite`]).
pub const SAFE_MAGNITUDE: f64 = 1e50;

/// Largest magnitude an update may bring a detector's number to. Beyond it, later ordinary
/// values could still overflow (a mean of 1.8e308 makes the next deviation infinite), so such
/// an update is refused, like one that gives infinity or NaN outright.
pub const STATE_BOUND: f64 = 1e150;

impl Detector {
    /// [`Detector::update`], unless the update would leave a NaN in the state or bring one of
    /// its numbers past [`STATE_BOUND`] (infinity included; some detectors hold `inf` as a
    /// "none yet" minimum, as River's do, and those may stay): then the state stays as it was
    /// and `None` is returned. One extreme value (1.8e308) must not blind a detector for good.
    pub fn update_finite(&mut self, x: f64) -> Option<Signal> {
        if x.abs() <= SAFE_MAGNITUDE {
            return Some(self.update(x));
        }
        let before = self.clone();
        let signal = self.update(x);
        if finite::broke(&finite::floats(&before), &finite::floats(&*self)) {
            *self = before;
            return None;
        }
        Some(signal)
    }
}

/// A deserializer that only records the field names a struct asks for.
mod fields {
    use serde::de::{self, Visitor};

    pub struct Fields<'a>(pub &'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
}

/// Counts the non-finite floats of a serializable state, by walking it with a serializer that
/// writes nothing.
mod finite {
    use serde::ser::{self, Serialize};

    /// `(NaNs, infinities)` among every float `v` serializes.
    #[cfg(test)]
    pub fn count<T: Serialize + ?Sized>(v: &T) -> (usize, usize) {
        let f = floats(v);
        (
            f.iter().filter(|x| x.is_nan()).count(),
            f.iter().filter(|x| x.is_infinite()).count(),
        )
    }

    /// Every float `v` serializes, in order.
    pub fn floats<T: Serialize + ?Sized>(v: &T) -> Vec<f64> {
        let mut c = Counter::default();
        // The counter's serializer has no error of its own to raise.
        let _ = v.serialize(&mut c);
        c.floats
    }

    /// Whether going from the floats `before` to `after` put a NaN anywhere, or a number
    /// past `STATE_BOUND` where one within it was or where there was nothing.
    pub fn broke(before: &[f64], after: &[f64]) -> bool {
        let within = |x: f64| x.abs() <= super::STATE_BOUND;
        after
            .iter()
            .enumerate()
            .any(|(i, &a)| a.is_nan() || (!within(a) && before.get(i).is_none_or(|&b| within(b))))
    }

    #[derive(Default)]
    struct Counter {
        floats: Vec<f64>,
    }

    #[derive(Debug)]
    struct Never;

    impl std::fmt::Display for Never {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("unreachable")
        }
    }

    impl std::error::Error for Never {}

    impl ser::Error for Never {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Never
        }
    }

    macro_rules! ignore {
        ($($name:ident: $t:ty),*) => {
            $(fn $name(self, _: $t) -> Result<(), Never> { Ok(()) })*
        };
    }

    /// The compound serializers: each element, field, key or value is walked the same way.
    macro_rules! compound {
        ($($tr:ident: $($m:ident$(($key:ty))?),+;)*) => {
            $(impl ser::$tr for &mut Counter {
                type Ok = ();
                type Error = Never;
                $(fn $m<T: Serialize + ?Sized>(&mut self, $(_: $key,)? v: &T) -> Result<(), Never> {
                    v.serialize(&mut **self)
                })+
                fn end(self) -> Result<(), Never> {
                    Ok(())
                }
            })*
        };
    }

    compound! {
        SerializeSeq: serialize_element;
        SerializeTuple: serialize_element;
        SerializeTupleStruct: serialize_field;
        SerializeTupleVariant: serialize_field;
        SerializeMap: serialize_key, serialize_value;
        SerializeStruct: serialize_field(&'static str);
        SerializeStructVariant: serialize_field(&'static str);
    }

    impl ser::Serializer for &mut Counter {
        type Ok = ();
        type Error = Never;
        type SerializeSeq = Self;
        type SerializeTuple = Self;
        type SerializeTupleStruct = Self;
        type SerializeTupleVariant = Self;
        type SerializeMap = Self;
        type SerializeStruct = Self;
        type SerializeStructVariant = Self;

        fn serialize_f64(self, v: f64) -> Result<(), Never> {
            self.floats.push(v);
            Ok(())
        }
        fn serialize_f32(self, v: f32) -> Result<(), Never> {
            self.serialize_f64(f64::from(v))
        }
        ignore!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
            serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
            serialize_u64: u64, serialize_char: char, serialize_str: &str,
            serialize_bytes: &[u8], serialize_unit_struct: &'static str);
        fn serialize_none(self) -> Result<(), Never> {
            Ok(())
        }
        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Never> {
            v.serialize(self)
        }
        fn serialize_unit(self) -> Result<(), Never> {
            Ok(())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), Never> {
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<(), Never> {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> Result<(), Never> {
            v.serialize(self)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
            Ok(self)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self, Never> {
            Ok(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_detector() -> Vec<Detector> {
        KINDS
            .iter()
            .map(|k| {
                let empty = serde_json::json!({});
                DetectorParams::parse(k, empty)
                    .expect("defaults parse")
                    .expect("a detector kind")
                    .build()
            })
            .collect()
    }

    #[test]
    fn names_come_from_the_parameter_structs() {
        assert_eq!(
            DetectorParams::names("cusum"),
            Some(&["target", "sigma", "k", "h", "warm_start"][..])
        );
        assert!(DetectorParams::names("adwin").unwrap().contains(&"delta"));
        assert_eq!(DetectorParams::names("drift_window"), None);
        for k in KINDS {
            assert!(!DetectorParams::names(k).unwrap().is_empty(), "{k}");
        }
    }

    /// Security review, finding 10: after one 1.8e308, every detector's state stays finite
    /// (no NaN, no new infinity), and the continuous ones still flag a 10-sigma shift.
    #[test]
    fn finding_10_one_extreme_value_does_not_blind_a_detector() {
        for mut det in every_detector() {
            let kind = det.summary();
            // A stable stream around 0.2 (0 or 1 for the error-rate detectors' sake: a mean
            // of 0.2), the extreme value, then a shift to a constant 1.0 (a 10-sigma shift).
            let stable = |i: u64| if i.is_multiple_of(5) { 1.0 } else { 0.0 };
            for i in 0..500 {
                det.update_finite(stable(i));
            }
            for x in [f64::MAX, -f64::MAX, 1e300] {
                let before = finite::floats(&det);
                let r = det.update_finite(x);
                assert!(
                    !finite::broke(&before, &finite::floats(&det)),
                    "{kind}: a NaN or a new infinity after {x:e} ({r:?}): {}",
                    det.summary()
                );
            }
            let continuous = matches!(
                det,
                Detector::Adwin(_) | Detector::Cusum(_) | Detector::PageHinkley(_)
            );
            let mut drifted = false;
            for _ in 0..2000 {
                drifted |= det.update_finite(1.0) == Some(Signal::Drift);
            }
            if continuous {
                assert!(drifted, "{}: no drift after the shift", det.summary());
            }
        }
    }

    #[test]
    fn finite_counter_sees_every_float() {
        assert_eq!(finite::count(&vec![1.0, f64::NAN, f64::INFINITY]), (1, 1));
        assert_eq!(
            finite::count(&(Some(f64::NEG_INFINITY), [0.5f32, f32::NAN])),
            (1, 1)
        );
        assert_eq!(
            finite::count(&every_detector()),
            finite::count(&every_detector())
        );
    }

    /// The guard refuses exactly what would have broken the state: an update that the plain
    /// path would have made NaN is undone, one that stays finite goes through.
    #[test]
    fn a_refused_update_leaves_the_state_untouched() {
        for mut det in every_detector() {
            for i in 0..100 {
                det.update(f64::from(i % 3) / 2.0);
            }
            let mut plain = det.clone();
            plain.update(f64::MAX);
            plain.update(-f64::MAX);
            let before = det.clone();
            let a = det.update_finite(f64::MAX);
            let b = det.update_finite(-f64::MAX);
            if finite::count(&plain).0 > 0 && a.is_none() && b.is_none() {
                assert_eq!(
                    serde_json::to_string(&det).unwrap(),
                    serde_json::to_string(&before).unwrap()
                );
            }
        }
    }
}
