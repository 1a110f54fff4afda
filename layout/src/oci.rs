//! TODO(skeleton): oci
