//! TODO(skeleton): arguments that select an image and a layout.
