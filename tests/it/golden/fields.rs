//! A record as a flat listing of its fields, one line per stored scalar:
//!
//! ```text
//! policies[0].kind: enum StateKind = Detector (#2)
//! policies[0].kind::Detector: enum Detector = Adwin (#0)
//! policies[0].kind::Detector::Adwin.params.delta: f64 = 0.002
//! policies[0].kind::Detector::Adwin.row_len: seq = 3 items
//! last_decision: option = None
//! ```
//!
//! It walks what serde hands the store's encoder (so `#[serde(skip)]` fields are not in it),
//! names every field, and writes every number exactly (`{:?}` of a float is the shortest text
//! that gives back the same bits, `inf` and `-0.0` included; a NaN also shows its bits). Enum
//! variants show their index, which is what bincode stores. The golden fixtures in
//! `tests/fixtures/golden/` keep this listing beside each record's bytes, and the golden test
//! decodes the bytes and compares the two listings line by line.
//!
//! Shared by the golden test and the example that wrote the fixtures
//! (`examples/golden_fixtures.rs`, which includes this file by path).

use std::fmt::Display;

use serde::ser::{self, Serialize};
use visutility::policy::Obs;

/// The listing of `value`, one line per field.
pub fn fields<T: Serialize + ?Sized>(value: &T) -> Vec<String> {
    let mut out = Vec::new();
    value
        .serialize(Field {
            path: String::new(),
            out: &mut out,
        })
        .unwrap_or_else(|e| panic!("cannot list the fields of a record: {}", e.0));
    out
}

/// The listing of events read back from the observation log (`Obs` is not serde: the log has
/// its own encoding), under `prefix`. `meta` is never logged, so it is not listed.
pub fn obs_fields(prefix: &str, events: &[Obs]) -> Vec<String> {
    let mut out = vec![format!("{prefix}: seq = {} items", events.len())];
    for (i, e) in events.iter().enumerate() {
        let p = format!("{prefix}[{i}]");
        out.push(format!("{p}.ts: f64 = {}", float(e.ts)));
        out.push(format!("{p}.received: f64 = {}", float(e.received)));
        for (name, v) in [
            ("drift_score", e.drift_score),
            ("accuracy", e.accuracy),
            ("value", e.value),
        ] {
            out.push(match v {
                Some(v) => format!("{p}.{name}?: f64 = {}", float(v)),
                None => format!("{p}.{name}: option = None"),
            });
        }
        out.push(match e.error {
            Some(v) => format!("{p}.error?: bool = {v}"),
            None => format!("{p}.error: option = None"),
        });
        out.push(format!("{p}.metrics: seq = {} items", e.metrics.len()));
        for (j, (name, v)) in e.metrics.iter().enumerate() {
            out.push(format!("{p}.metrics[{j}].0: str = {name:?}"));
            out.push(format!("{p}.metrics[{j}].1: f64 = {}", float(*v)));
        }
    }
    out
}

/// Lines of `want` and `got` that differ, for a readable failure.
pub fn diff(want: &[String], got: &[String]) -> String {
    let mut out = String::new();
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i), got.get(i));
        if w != g {
            out.push_str(&format!(
                "line {}:\n  want {}\n  got  {}\n",
                i + 1,
                w.map_or("(nothing)", String::as_str),
                g.map_or("(nothing)", String::as_str)
            ));
        }
    }
    out
}

fn float(v: f64) -> String {
    if v.is_nan() {
        format!("NaN (bits {:#018x})", v.to_bits())
    } else {
        format!("{v:?}")
    }
}

#[derive(Debug)]
struct Error(String);

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// One place in the record: its path, and the listing it adds to.
struct Field<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl<'a> Field<'a> {
    fn put(self, ty: &str, v: impl Display) -> Result<(), Error> {
        let path = if self.path.is_empty() {
            "(record)"
        } else {
            &self.path
        };
        self.out.push(format!("{path}: {ty} = {v}"));
        Ok(())
    }

    fn at(path: &str, seg: &str, out: &'a mut Vec<String>) -> Field<'a> {
        let path = if path.is_empty() {
            seg.trim_start_matches('.').to_owned()
        } else {
            format!("{path}{seg}")
        };
        Field { path, out }
    }

    fn variant(self, name: &str, index: u32, variant: &str) -> Field<'a> {
        let path = self.path.clone();
        let out = self.out;
        out.push(format!(
            "{}: enum {name} = {variant} (#{index})",
            if path.is_empty() { "(record)" } else { &path }
        ));
        Field::at(&path, &format!("::{variant}"), out)
    }

    fn compound(self, len_line: bool) -> Compound<'a> {
        let at = len_line.then(|| {
            self.out.push(String::new());
            self.out.len() - 1
        });
        Compound {
            path: self.path,
            out: self.out,
            n: 0,
            len_line: at,
        }
    }
}

/// A sequence, tuple, map or struct being listed: its elements go under its path.
struct Compound<'a> {
    path: String,
    out: &'a mut Vec<String>,
    n: usize,
    /// Where the "seq = N items" line goes, filled in at the end.
    len_line: Option<usize>,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, seg: String, value: &T) -> Result<(), Error> {
        self.n += 1;
        value.serialize(Field::at(&self.path, &seg, self.out))
    }

    fn finish(self, what: &str) -> Result<(), Error> {
        if let Some(i) = self.len_line {
            let path = if self.path.is_empty() {
                "(record)"
            } else {
                &self.path
            };
            self.out[i] = format!("{path}: {what} = {} items", self.n);
        }
        Ok(())
    }
}

macro_rules! scalars {
    ($($method:ident($ty:ty) = $name:literal;)*) => {
        $(fn $method(self, v: $ty) -> Result<(), Error> {
            self.put($name, v)
        })*
    };
}

impl<'a> ser::Serializer for Field<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    scalars! {
        serialize_bool(bool) = "bool";
        serialize_i8(i8) = "i8";
        serialize_i16(i16) = "i16";
        serialize_i32(i32) = "i32";
        serialize_i64(i64) = "i64";
        serialize_u8(u8) = "u8";
        serialize_u16(u16) = "u16";
        serialize_u32(u32) = "u32";
        serialize_u64(u64) = "u64";
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.put("f32", float(f64::from(v)))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.put("f64", float(v))
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.put("char", format!("{v:?}"))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.put("str", format!("{v:?}"))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        self.put("bytes", hex)
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.put("option", "None")
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        let path = format!("{}?", self.path);
        value.serialize(Field {
            path,
            out: self.out,
        })
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.put("unit", "()")
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<(), Error> {
        self.put(name, "()")
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.put(&format!("enum {name}"), format!("{variant} (#{index})"))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self.variant(name, index, variant))
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        Ok(self.compound(true))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, Error> {
        Ok(self.compound(false))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        Ok(self.compound(false))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        Ok(self.variant(name, index, variant).compound(false))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        Ok(self.compound(true))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound<'a>, Error> {
        Ok(self.compound(false))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        Ok(self.variant(name, index, variant).compound(false))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(format!("[{}]", self.n), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("seq")
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(format!(".{}", self.n), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("tuple")
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(format!(".{}", self.n), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("tuple")
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(format!(".{}", self.n), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("tuple")
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        // Keys are listed as an element of their own, values after them.
        self.element(format!("[{}].key", self.n), key)?;
        self.n -= 1;
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(format!("[{}].value", self.n), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("map")
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.element(format!(".{key}"), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("struct")
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.element(format!(".{key}"), value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish("struct")
    }
}
