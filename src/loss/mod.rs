//! Training losses (METHODS.md), each checked against hand-computed values.

pub mod multilabel;
