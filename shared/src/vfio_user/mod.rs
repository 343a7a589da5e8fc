//! The vfio-user message codec (sans-I/O). Written by the codec work; placeholder.
