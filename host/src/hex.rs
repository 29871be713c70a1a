//! Lower-case hex, the form of digests, keys and random names.

/// `bytes` as two lower-case hex digits each.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
