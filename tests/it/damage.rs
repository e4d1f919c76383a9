//! A damaged store is refused loudly, never opened as a new empty one.
