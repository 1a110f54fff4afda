//! TODO(skeleton): monogon
