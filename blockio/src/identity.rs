//! What a base disk is made of.

use std::fmt;

/// Identifies a composed base disk: the image it comes from and how it was
/// laid out. Two bases with equal identities have equal bytes, except for
/// what derives from the disk id (GUIDs), which the overlay itself stores.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BaseIdentity {
    /// The OCI manifest digest, e.g. `sha256:0123…`.
    pub manifest_digest: String,
    /// SHA-256 of the canonical layout description (partitions, sizes and
    /// contents; not the disk id).
    pub layout_hash: [u8; 32],
}

impl fmt::Display for BaseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} layout ", self.manifest_digest)?;
        for b in &self.layout_hash[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
