//! Typed reading of Redis replies. Replies are outside data: anything unexpected is
//! [`Error::CorruptData`], never a panic.

use classifier_core::job::JobId;
use classifier_core::Error;
use classifier_core::Result;
use redis::Value;

fn corrupt(what: &str, v: &Value) -> Error {
    Error::CorruptData(format!("unexpected Redis reply for {what}: {v:?}"))
}

/// The elements of an array reply.
pub(crate) fn array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(corrupt(what, other)),
    }
}

/// An integer reply (or a string holding one).
pub(crate) fn int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| corrupt(what, v)),
        Value::SimpleString(s) => s.trim().parse().map_err(|_| corrupt(what, v)),
        other => Err(corrupt(what, other)),
    }
}

/// A non-negative integer reply.
pub(crate) fn uint(v: &Value, what: &str) -> Result<u64> {
    u64::try_from(int(v, what)?).map_err(|_| corrupt(what, v))
}

/// A string reply; `None` for nil.
pub(crate) fn opt_string(v: &Value, what: &str) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map(Some)
            .map_err(|_| corrupt(what, v)),
        Value::SimpleString(s) => Ok(Some(s.clone())),
        Value::Okay => Ok(Some("OK".to_string())),
        other => Err(corrupt(what, other)),
    }
}

/// A string reply that must be there.
pub(crate) fn string(v: &Value, what: &str) -> Result<String> {
    opt_string(v, what)?.ok_or_else(|| corrupt(what, v))
}

/// A job id stored by us.
pub(crate) fn job_id(v: &Value, what: &str) -> Result<JobId> {
    let s = string(v, what)?;
    s.parse()
        .map_err(|e| Error::CorruptData(format!("bad job id {s:?} in {what}: {e}")))
}

/// A JSON document stored by us.
pub(crate) fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::CorruptData(format!("{what}: {e}")))
}

/// Milliseconds since the epoch as a timestamp.
pub(crate) fn millis(ms: i64, what: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| Error::CorruptData(format!("{what}: timestamp {ms} ms out of range")))
}

/// Element `i` of a reply array.
pub(crate) fn at<'a>(items: &'a [Value], i: usize, what: &str) -> Result<&'a Value> {
    items
        .get(i)
        .ok_or_else(|| Error::CorruptData(format!("{what}: reply too short ({})", items.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_corrupt_data_not_a_panic() {
        assert!(matches!(
            int(&Value::BulkString(b"x".to_vec()), "t"),
            Err(Error::CorruptData(_))
        ));
        assert!(matches!(
            job_id(&Value::BulkString(b"nope".to_vec()), "t"),
            Err(Error::CorruptData(_))
        ));
        assert!(matches!(
            array(&Value::Nil, "t"),
            Err(Error::CorruptData(_))
        ));
        assert!(matches!(
            uint(&Value::Int(-1), "t"),
            Err(Error::CorruptData(_))
        ));
        assert_eq!(int(&Value::BulkString(b"42".to_vec()), "t").ok(), Some(42));
        assert_eq!(opt_string(&Value::Nil, "t").ok(), Some(None));
    }
}
