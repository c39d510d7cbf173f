//! `classifier-queue`: job-store and queue backends for the classifier service.
//!
//! Not implemented yet: the in-memory and Redis backends arrive with the jobs and Redis
//! issues. This crate holds no code until then, so that nothing here pretends to work.
