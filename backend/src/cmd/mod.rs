//! The commands of the `ocidisk` binary, one module each, with the argument
//! groups they share: [`image_args`] (which image, which layout) and
//! [`registry_args`] (how to reach a registry).

pub mod cache;
pub mod export;
pub mod image_args;
pub mod inspect;
pub mod overlay;
pub mod pull;
pub mod registry_args;
pub mod serve;
pub mod stats;
pub mod trace;
