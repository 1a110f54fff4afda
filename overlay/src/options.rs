//! What opening or creating an overlay asks for.

use blockio::BaseIdentity;

/// What [`Overlay::create`](crate::Overlay::create) needs.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Bytes of the virtual disk: a positive multiple of 512.
    pub disk_size: u64,
    /// The base the overlay belongs to.
    pub base: BaseIdentity,
}

/// How [`Overlay::open`](crate::Overlay::open) treats the file.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Accept an overlay made for another base: its writes are kept over the
    /// new base and the header records the new identity (not with
    /// `read_only`, which writes nothing).
    pub rebase: bool,
    /// Every write is durable before it returns (the guest disabled its
    /// write cache); see [`Overlay::set_writethrough`](crate::Overlay::set_writethrough).
    pub writethrough: bool,
    /// Open without write access; writes fail, nothing is written.
    pub read_only: bool,
}
