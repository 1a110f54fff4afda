//! TODO(skeleton): gpt
