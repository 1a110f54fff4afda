//! TODO(skeleton): cache
