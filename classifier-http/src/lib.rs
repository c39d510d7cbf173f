//! `classifier-http`: the hyper 1.x adapter for the classifier service.
//!
//! Not implemented yet: the HTTP API arrives with its own issue. This crate holds no code
//! until then, so that nothing here pretends to work.
