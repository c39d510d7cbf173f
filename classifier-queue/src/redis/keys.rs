//! The Redis key layout of one deployment (one key prefix).
//!
//! Every key of a deployment starts with the hash tag `{prefix}`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}:job:<id>:status` | hash `rev`, `status`, `doc` | the job record (JSON in `doc`), TTL [`Ttls::status`] |
//! | `{p}:job:<id>:result` | string (JSON) | the result, TTL [`Ttls::result`] |
//! | `{p}:job:<id>:image`  | string (raw bytes) | the payload, TTL [`Ttls::image`] |
//! | `{p}:job:<id>:events` | pub/sub channel | every stored record of the job, in order |
//! | `{p}:q:ready:<rank>`  | sorted set id -> [`QueueConfig::score`] | ready jobs, one set per priority |
//! | `{p}:q:delayed`       | sorted set id -> due time (ms) | jobs waiting out a retry delay |
//! | `{p}:q:leased`        | sorted set id -> lease expiry (ms) | jobs held by a consumer |
//! | `{p}:q:dead`          | sorted set id -> dead-letter time (ms) | the dead-letter list |
//! | `{p}:q:prio`          | hash id -> rank | priority of every queued, leased or dead job |
//! | `{p}:q:deliveries`    | hash id -> n | deliveries so far |
//! | `{p}:q:tokens`        | hash id -> token | the token of the current lease |
//! | `{p}:q:deadinfo`      | hash id -> `deliveries|dead_at_ms|reason` | dead-letter details |
//! | `{p}:q:seq`           | counter | lease token sequence |
//! | `{p}:q:score`         | hash id -> score (us) | the ordering score of every queued or leased job |
//! | `{p}:q:clock`         | string | last enqueue time handed out (us), so no two are equal |
//! | `{p}:workers:seen`, `{p}:workers:info` | sorted set / hash | worker heartbeats |
//! | `{p}:models:generation` | counter | model-reload generation: every process re-reads its manifest when it grows |
//! | `{p}:rl:<bucket>`     | hash `tokens`, `ts` | an HTTP rate-limit bucket ([`super::RedisRateLimiter`]), expires when full |
//! | `{p}:wh:pending`      | hash event_id -> JSON | pending webhook deliveries ([`WebhookDelivery`]) |
//! | `{p}:wh:due`          | sorted set event_id -> due time (ms) | when each pending delivery is due (claims push it forward) |
//! | `{p}:wh:dead`         | hash event_id -> JSON | dead-lettered webhook deliveries |
//! | `{p}:wh:dead:order`   | sorted set event_id -> dead-letter time (ms, strictly increasing) | the webhook dead-letter list, oldest first |
//! | `{p}:fb:entries`      | hash job_id -> JSON | feedback ([`FeedbackEntry`]), one per job, no TTL |
//! | `{p}:fb:order`        | sorted set job_id -> first-given time (ms, strictly increasing) | feedback in the order first given |
//! | `{p}:cache:<model_version>:<sha256>` | string (JSON), TTL as given | the result cache ([`JobResult`]) |
//!
//! # Redis Cluster
//!
//! Redis Cluster hashes only the first `{...}` of a key, so every key above lives in the slot
//! of `prefix`. That is deliberate: creating a job touches its record, its payload and the
//! queue, and dequeue/ack/nack/dead-letter touch several queue structures; all of these are
//! single Lua scripts, and a script may only touch keys of one slot. With one tag per
//! deployment every script is single-slot (no `CROSSSLOT` errors, no two-phase protocols) and
//! every key a script touches is declared in `KEYS`, as Cluster requires.
//!
//! The trade-off: one deployment's data lives on one shard (plus its replicas), so Cluster
//! gives availability, not horizontal scaling, for a single prefix. A Redis shard serves far
//! more queue operations per second than the model can classify images, and payloads expire
//! after 30 minutes, so one slot is ample for a deployment; several independent deployments
//! (different prefixes) spread over the shards. Tagging job keys per job (`{p:<id>}`) would
//! spread the payloads, but then "create and enqueue atomically" and "CAS + publish" could
//! no longer be one script with the queue keys.
//!
//! [`Ttls::status`]: classifier_core::backend::Ttls::status
//! [`Ttls::result`]: classifier_core::backend::Ttls::result
//! [`Ttls::image`]: classifier_core::backend::Ttls::image
//! [`QueueConfig::score`]: classifier_core::backend::QueueConfig::score
//! [`WebhookDelivery`]: classifier_core::backend::WebhookDelivery
//! [`FeedbackEntry`]: classifier_core::backend::FeedbackEntry
//! [`JobResult`]: classifier_core::job::JobResult

use classifier_core::job::JobId;

/// Key names of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{prefix}`, the hash tag every key starts with.
    tag: String,
}

/// Indexes (0-based) of the queue keys in [`Keys::queue`]; Lua sees them 1-based.
pub(crate) const QUEUE_KEYS: usize = 14;

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The hash tag and prefix of every key (`{prefix}`), e.g. for `SCAN MATCH {prefix}:*`.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    pub(crate) fn status(&self, id: JobId) -> String {
        format!("{}:job:{id}:status", self.tag)
    }

    pub(crate) fn result(&self, id: JobId) -> String {
        format!("{}:job:{id}:result", self.tag)
    }

    pub(crate) fn image(&self, id: JobId) -> String {
        format!("{}:job:{id}:image", self.tag)
    }

    pub(crate) fn events(&self, id: JobId) -> String {
        format!("{}:job:{id}:events", self.tag)
    }

    /// The queue keys every queue script gets as `KEYS[1..=14]`, in this order: ready sets
    /// for ranks 0..=3, delayed, leased, dead, prio, deliveries, tokens, deadinfo, seq,
    /// score, clock.
    pub(crate) fn queue(&self) -> [String; QUEUE_KEYS] {
        let t = &self.tag;
        [
            format!("{t}:q:ready:0"),
            format!("{t}:q:ready:1"),
            format!("{t}:q:ready:2"),
            format!("{t}:q:ready:3"),
            format!("{t}:q:delayed"),
            format!("{t}:q:leased"),
            format!("{t}:q:dead"),
            format!("{t}:q:prio"),
            format!("{t}:q:deliveries"),
            format!("{t}:q:tokens"),
            format!("{t}:q:deadinfo"),
            format!("{t}:q:seq"),
            format!("{t}:q:score"),
            format!("{t}:q:clock"),
        ]
    }

    pub(crate) fn workers_seen(&self) -> String {
        format!("{}:workers:seen", self.tag)
    }

    pub(crate) fn workers_info(&self) -> String {
        format!("{}:workers:info", self.tag)
    }

    pub(crate) fn model_generation(&self) -> String {
        format!("{}:models:generation", self.tag)
    }

    /// The webhook outbox keys, as the webhook scripts get them in `KEYS[1..=4]`: pending,
    /// due, dead, dead order.
    pub(crate) fn webhooks(&self) -> [String; 4] {
        let t = &self.tag;
        [
            format!("{t}:wh:pending"),
            format!("{t}:wh:due"),
            format!("{t}:wh:dead"),
            format!("{t}:wh:dead:order"),
        ]
    }

    /// The feedback keys, as the feedback scripts get them in `KEYS[1..=2]`: entries, order.
    pub(crate) fn feedback(&self) -> [String; 2] {
        let t = &self.tag;
        [format!("{t}:fb:entries"), format!("{t}:fb:order")]
    }

    /// The cached result of an image (by sha256) under a model version.
    pub(crate) fn cache(&self, model_version: &str, image_sha256: &str) -> String {
        format!("{}:cache:{model_version}:{image_sha256}", self.tag)
    }

    /// The rate-limit bucket of `bucket` (e.g. `key:<owner>` or `ip:<addr>`).
    pub(crate) fn rate_limit(&self, bucket: &str) -> String {
        format!("{}:rl:{bucket}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_deployment_tag() {
        let k = Keys::new("cls");
        let id = JobId::new();
        for key in [
            k.status(id),
            k.result(id),
            k.image(id),
            k.workers_seen(),
            k.rate_limit("ip:1"),
            k.cache("v1", "ab"),
        ]
        .into_iter()
        .chain(k.queue())
        .chain(k.webhooks())
        .chain(k.feedback())
        {
            assert!(key.starts_with("{cls}:"), "{key}");
        }
        assert_eq!(k.status(id), format!("{{cls}}:job:{id}:status"));
    }
}
