//! Model ids as a connection's index keeps them.

/// Longest model id kept inside the index's table entry rather than behind a pointer.
const ID_INLINE: usize = 30;

/// A model id as a connection's index keeps it: short ids (all that real deployments use)
/// inline in the table entry, so a lookup compares bytes in the entry it probes instead of
/// following a pointer to a separate allocation per id (with a thousand models, that chase
/// missed the cache on most events: about a tenth of the connection thread's time).
/// Borrows as the id's bytes, with the same hash and equality.
pub(super) enum IdKey {
    Inline { len: u8, bytes: [u8; ID_INLINE] },
    Heap(Box<[u8]>),
}

impl IdKey {
    pub(super) fn new(id: &str) -> IdKey {
        let b = id.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= ID_INLINE => {
                let mut bytes = [0; ID_INLINE];
                bytes[..b.len()].copy_from_slice(b);
                IdKey::Inline { len, bytes }
            }
            _ => IdKey::Heap(b.into()),
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            IdKey::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            IdKey::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for IdKey {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.bytes().hash(h)
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for IdKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    /// Inline and heap keys find the same ids as the plain strings would, and never each
    /// other's: lengths around the inline limit, ids that share a prefix, the empty id.
    #[test]
    fn id_keys_look_up_like_strings() {
        let ids: Vec<String> = (0..=ID_INLINE + 3)
            .flat_map(|n| ["a".repeat(n), format!("{}b", "a".repeat(n))])
            .chain(["model-00042".into(), "model-00042x".into(), "x".repeat(128)])
            .collect();
        let mut index: FxHashMap<IdKey, u32> = FxHashMap::default();
        for (i, id) in ids.iter().enumerate() {
            let key = IdKey::new(id);
            assert_eq!(key.bytes(), id.as_bytes());
            assert!(index.insert(key, i as u32).is_none(), "{id:?} collided");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(index.get(id.as_bytes()), Some(&(i as u32)), "{id:?}");
        }
        assert_eq!(index.get(&b"model-0004"[..]), None);
        assert_eq!(index.get("a".repeat(ID_INLINE + 9).as_bytes()), None);
    }
}
