//! Development tooling.
