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
}
