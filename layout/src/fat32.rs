//! TODO(skeleton): fat32
