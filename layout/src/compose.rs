//! TODO(skeleton): compose
