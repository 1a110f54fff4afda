//! TODO(skeleton): spec
