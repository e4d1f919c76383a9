//! The encoding of every stored value: a record version byte followed by its bincode 2
//! payload (standard config, through serde). Readers dispatch on the byte, so a record format
//! can change without a flag day: a new encoding gets a new byte (and a golden fixture in
//! `tests/fixtures/golden/`).

use super::StoreError;

/// The version byte in front of every record this build writes.
const RECORD_VERSION: u8 = 1;

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(64);
    buf.push(RECORD_VERSION);
    bincode::serde::encode_into_std_write(value, &mut buf, bincode::config::standard())?;
    Ok(buf)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, payload)) => {
            bincode::serde::decode_from_slice(payload, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|source| StoreError::Decode {
                    key: key.to_owned(),
                    source,
                })
        }
        Some((&version, _)) => Err(StoreError::UnknownRecordVersion {
            key: key.to_owned(),
            version,
        }),
        None => Err(StoreError::UnknownRecordVersion {
            key: key.to_owned(),
            version: 0,
        }),
    }
}

/// The tag in front of a checkpoint's probation extension.
const EXT_PROBATION: u8 = 1;

/// A model's checkpoint: its [`ModelRecord`](super::ModelRecord) as every record, then, for a
/// model with probation state, that state as an extension after the record (a tag byte and its
/// bincode payload). A reader that knows no extension decodes the record and ignores the rest,
/// so a release without probation still opens a store written by one with it.
pub(super) fn encode_model(record: &super::ModelRecord) -> Result<Vec<u8>, StoreError> {
    let mut buf = encode(record)?;
    if !record.probation.is_empty() {
        buf.push(EXT_PROBATION);
        bincode::serde::encode_into_std_write(
            &record.probation,
            &mut buf,
            bincode::config::standard(),
        )?;
    }
    Ok(buf)
}

/// Decodes what [`encode_model`] wrote (and every checkpoint written before the extension).
///
/// Bytes after the record that start with a tag this build does not know are ignored, as an
/// older build ignores the probation extension: a release that adds an extension keeps its
/// store readable by the one before (a downgrade loses only that extension's state, which the
/// replay of the logged events rebuilds as far as the log reaches). A known tag whose payload
/// does not decode is an error, as a damaged record is.
pub(super) fn decode_model(key: &str, bytes: &[u8]) -> Result<super::ModelRecord, StoreError> {
    let decode_err = |source| StoreError::Decode {
        key: key.to_owned(),
        source,
    };
    let payload = match bytes.split_first() {
        Some((&RECORD_VERSION, payload)) => payload,
        _ => return decode(key, bytes),
    };
    let (mut record, used): (super::ModelRecord, usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(decode_err)?;
    if let Some((&EXT_PROBATION, ext)) = payload[used..].split_first() {
        record.probation = bincode::serde::decode_from_slice(ext, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(decode_err)?;
    }
    Ok(record)
}

/// Encodes any serde value the way the store does, for byte-exact round-trip tests.
pub fn encode_record<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode(value)
}

/// Decodes what [`encode_record`] wrote.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode("record", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ModelRecord;

    #[test]
    fn unknown_record_version_is_an_error_not_a_panic() {
        let r: Result<ModelRecord, _> = decode_record(&[99, 1, 2, 3]);
        assert!(matches!(
            r,
            Err(StoreError::UnknownRecordVersion { version: 99, .. })
        ));
        let r: Result<ModelRecord, _> = decode_record(&[RECORD_VERSION, 0xff]);
        assert!(matches!(r, Err(StoreError::Decode { .. })));
    }

    fn a_record() -> ModelRecord {
        ModelRecord {
            events: 1234,
            first_seen: 1_764_172_800.25,
            last_seen: 1_764_176_400.5,
            decisions: 3,
            warmup_left: 7,
            recent_drift: [0.1f32, 0.2, 0.35].into_iter().collect(),
            recent_accuracy: [0.93f32, 0.91].into_iter().collect(),
            ..ModelRecord::default()
        }
    }

    fn a_probation() -> crate::probation::ModelProbation {
        use crate::probation::{ModelProbation, Probation, Sample};
        let mut p = Probation::new(42, Sample::of([0.93, 0.92, 0.95, 0.9]), 3);
        p.candidate = Sample::of([0.1, 0.30000000000000004, 0.7]);
        p.warmup_left = 1;
        p.started_at = 1_764_176_000.125;
        p.z = Some(1.25);
        p.z_threshold = Some(4.33);
        ModelProbation {
            recent: [0.9, 1.0, 0.0, f64::MIN_POSITIVE].into_iter().collect(),
            last_promoted: Some(Sample::of([0.5, 0.75])),
            current: Some(p),
        }
    }

    #[test]
    fn a_checkpoint_with_a_probation_extension_round_trips_bit_for_bit() {
        let mut record = a_record();
        record.probation = a_probation();
        let bytes = encode_model(&record).unwrap();
        let back = decode_model("m", &bytes).unwrap();
        assert_eq!(back, record);
        let (p, q) = (
            back.probation.current.as_ref().unwrap(),
            record.probation.current.as_ref().unwrap(),
        );
        // Equal as numbers is not enough: a resumed probation must go on from the same bits.
        assert_eq!(p.candidate.mean.to_bits(), q.candidate.mean.to_bits());
        assert_eq!(p.candidate.m2.to_bits(), q.candidate.m2.to_bits());
        assert_eq!(p.baseline.m2.to_bits(), q.baseline.m2.to_bits());
        assert_eq!(
            encode_model(&back).unwrap(),
            bytes,
            "re-encoded identically"
        );
        // The extension follows the record's own bytes, tagged.
        let plain = encode(&record).unwrap();
        assert_eq!(&bytes[..plain.len()], &plain[..]);
        assert_eq!(bytes[plain.len()], EXT_PROBATION);
    }

    #[test]
    fn a_checkpoint_without_probation_state_is_exactly_the_records_bytes() {
        let record = a_record();
        assert!(record.probation.is_empty());
        let bytes = encode_model(&record).unwrap();
        assert_eq!(
            bytes,
            encode(&record).unwrap(),
            "no extension, not even a tag"
        );
        // Byte-exact with the golden checkpoints written before the extension existed.
        for name in ["cusum", "ddm", "adwin"] {
            let path = format!(
                "{}/tests/fixtures/golden/checkpoint-{name}.v1.bin",
                env!("CARGO_MANIFEST_DIR")
            );
            let golden = std::fs::read(&path).unwrap();
            let decoded = decode_model(name, &golden).unwrap();
            assert!(decoded.probation.is_empty(), "{name}");
            assert_eq!(encode_model(&decoded).unwrap(), golden, "{name}");
            // And an older reader (the record alone) reads what this build writes.
            let mut with_ext = decoded.clone();
            with_ext.probation = a_probation();
            let old: ModelRecord = decode(name, &encode_model(&with_ext).unwrap()).unwrap();
            assert_eq!(old, decoded, "{name}: the record part is unchanged");
        }
    }

    #[test]
    fn an_unknown_trailing_tag_is_ignored_and_a_damaged_extension_refused() {
        let record = a_record();
        let plain = encode_model(&record).unwrap();
        // A later release's extension (an unknown tag and whatever follows): ignored.
        for tail in [&[0x7f_u8, 1, 2, 3][..], &[0xff], &[0, 0, 0, 0, 0]] {
            let mut bytes = plain.clone();
            bytes.extend_from_slice(tail);
            assert_eq!(decode_model("m", &bytes).unwrap(), record, "{tail:?}");
        }
        // After the probation extension too.
        let mut with_ext = record.clone();
        with_ext.probation = a_probation();
        let mut bytes = encode_model(&with_ext).unwrap();
        bytes.extend_from_slice(&[0x7f, 9, 9]);
        assert_eq!(decode_model("m", &bytes).unwrap(), with_ext);
        // The probation tag with a payload cut short: a decode error, not a silent reset.
        let mut cut = encode_model(&with_ext).unwrap();
        cut.truncate(plain.len() + 3);
        assert!(matches!(
            decode_model("m", &cut),
            Err(StoreError::Decode { .. })
        ));
    }
}
