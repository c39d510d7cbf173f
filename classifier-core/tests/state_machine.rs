//! The job state machine: property tests over arbitrary event sequences, and one unit test
//! per legal and illegal transition.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use classifier_core::job::tests_support::pending_job;
use classifier_core::job::{JobEvent, JobRecord, JobStatus, Stage};
use classifier_core::Error;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        Just(Stage::Initializing),
        Just(Stage::Preprocessing),
        Just(Stage::Inference),
        Just(Stage::Postprocessing),
        Just(Stage::Completed),
    ]
}

fn event() -> impl Strategy<Value = JobEvent> {
    prop_oneof![
        2 => Just(JobEvent::Start),
        6 => (stage(), 0u8..=110).prop_map(|(stage, progress)| JobEvent::Advance { stage, progress }),
        1 => Just(JobEvent::Complete),
        1 => "[a-z ]{0,12}".prop_map(|message| JobEvent::Fail { message }),
        1 => Just(JobEvent::Cancel),
    ]
}

fn processing() -> JobRecord {
    let mut job = pending_job();
    job.apply(&JobEvent::Start, t(1)).unwrap();
    job
}

fn advance(stage: Stage, progress: u8) -> JobEvent {
    JobEvent::Advance { stage, progress }
}

/// Apply `event` and check that a refusal is an `IllegalTransition` that changed nothing.
fn refused(job: &mut JobRecord, event: &JobEvent) {
    let before = job.clone();
    match job.apply(event, t(99)) {
        Err(Error::IllegalTransition {
            from, event: name, ..
        }) => {
            assert_eq!(from, before.status);
            assert_eq!(name, event.name());
        }
        other => panic!(
            "{event:?} on {:?} should be illegal, got {other:?}",
            before.status
        ),
    }
    assert_eq!(
        *job, before,
        "a refused event must leave the record unchanged"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn invariants_hold_for_any_event_sequence(events in prop::collection::vec(event(), 0..40)) {
        let mut job = pending_job();
        for (i, event) in events.iter().enumerate() {
            let before = job.clone();
            let now = t(i as i64 + 1);
            match job.apply(event, now) {
                Ok(()) => {
                    prop_assert!(!before.status.is_terminal(), "{:?} accepted after terminal {:?}", event, before.status);
                    prop_assert_eq!(job.revision, before.revision + 1);
                    prop_assert!(job.progress >= before.progress, "progress went back");
                    prop_assert!(job.stage >= before.stage, "stage went back");
                    prop_assert!(job.progress <= 100);
                    prop_assert_eq!(job.updated_at, now);
                    prop_assert_eq!(job.id, before.id);
                    prop_assert_eq!(job.created_at, before.created_at);
                    if job.status.is_terminal() {
                        prop_assert_eq!(job.finished_at, Some(now));
                    }
                    if job.status == JobStatus::Processing {
                        prop_assert!(job.started_at.is_some());
                    }
                    if matches!(event, JobEvent::Start) {
                        prop_assert_eq!(job.attempts, before.attempts + 1);
                    } else {
                        prop_assert_eq!(job.attempts, before.attempts);
                    }
                }
                Err(e) => {
                    prop_assert!(matches!(e, Error::IllegalTransition { .. }), "unexpected error {e}");
                    prop_assert_eq!(&job, &before, "an error must leave the record unchanged");
                }
            }
            if before.status.is_terminal() {
                prop_assert_eq!(&job, &before, "terminal states are final");
            }
            if job.status == JobStatus::Completed {
                prop_assert_eq!((job.progress, job.stage), (100, Stage::Completed));
            } else {
                prop_assert!(job.progress < 100, "only completion reaches 100%");
                prop_assert!(job.stage != Stage::Completed);
            }
            if job.status == JobStatus::Failed || job.status == JobStatus::Cancelled {
                prop_assert!(job.error_message.is_some());
            }
        }
    }

    #[test]
    fn every_event_after_a_terminal_state_is_refused(
        terminal in prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
        events in prop::collection::vec(event(), 1..10),
    ) {
        let mut job = processing();
        match terminal {
            0 => job.apply(&JobEvent::Complete, t(2)).unwrap(),
            1 => job.apply(&JobEvent::Fail { message: "x".into() }, t(2)).unwrap(),
            2 => job.apply(&JobEvent::Cancel, t(2)).unwrap(),
            _ => {
                job = pending_job();
                job.apply(&JobEvent::Cancel, t(2)).unwrap();
            }
        }
        let frozen = job.clone();
        for event in &events {
            prop_assert!(job.apply(event, t(3)).is_err());
            prop_assert_eq!(&job, &frozen);
        }
    }

    #[test]
    fn progress_is_clamped_never_decreasing(steps in prop::collection::vec(0u8..100, 1..20)) {
        let mut job = processing();
        let mut max = 0;
        for p in steps {
            job.apply(&advance(Stage::Inference, p), t(2)).unwrap();
            max = max.max(p);
            prop_assert_eq!(job.progress, max);
        }
    }
}

// ----- legal transitions ------------------------------------------------------------------

#[test]
fn pending_start_becomes_processing() {
    let mut job = pending_job();
    job.apply(&JobEvent::Start, t(1)).unwrap();
    assert_eq!(job.status, JobStatus::Processing);
    assert_eq!(job.stage, Stage::Initializing);
    assert_eq!((job.attempts, job.revision), (1, 1));
    assert_eq!(job.started_at, Some(t(1)));
    assert_eq!(job.updated_at, t(1));
}

#[test]
fn processing_start_again_is_a_redelivery() {
    let mut job = processing();
    job.apply(&advance(Stage::Inference, 40), t(2)).unwrap();
    job.apply(&JobEvent::Start, t(3)).unwrap();
    assert_eq!(job.status, JobStatus::Processing);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.started_at, Some(t(1)), "the first start time is kept");
    assert_eq!((job.stage, job.progress), (Stage::Inference, 40));
    assert_eq!(job.revision, 3);
}

#[test]
fn processing_advances_forward_and_to_the_same_stage() {
    let mut job = processing();
    job.apply(&advance(Stage::Preprocessing, 10), t(2)).unwrap();
    job.apply(&advance(Stage::Preprocessing, 20), t(3)).unwrap();
    job.apply(&advance(Stage::Postprocessing, 90), t(4))
        .unwrap();
    assert_eq!((job.stage, job.progress), (Stage::Postprocessing, 90));
    // A lower progress is clamped, not an error.
    job.apply(&advance(Stage::Postprocessing, 50), t(5))
        .unwrap();
    assert_eq!(job.progress, 90);
    assert_eq!(job.revision, 5);
}

#[test]
fn processing_completes_at_100() {
    let mut job = processing();
    job.apply(&advance(Stage::Inference, 60), t(2)).unwrap();
    job.apply(&JobEvent::Complete, t(3)).unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!((job.stage, job.progress), (Stage::Completed, 100));
    assert_eq!(job.finished_at, Some(t(3)));
    assert_eq!(job.error_message, None);
}

#[test]
fn processing_fails_keeping_its_stage() {
    let mut job = processing();
    job.apply(&advance(Stage::Inference, 60), t(2)).unwrap();
    job.apply(
        &JobEvent::Fail {
            message: "model crashed".into(),
        },
        t(3),
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!((job.stage, job.progress), (Stage::Inference, 60));
    assert_eq!(job.error_message.as_deref(), Some("model crashed"));
    assert_eq!(job.finished_at, Some(t(3)));
}

#[test]
fn pending_and_processing_can_be_cancelled() {
    let mut pending = pending_job();
    pending.apply(&JobEvent::Cancel, t(1)).unwrap();
    assert_eq!(pending.status, JobStatus::Cancelled);
    assert_eq!(pending.stage, Stage::Initializing);
    assert!(pending.error_message.is_some());

    let mut job = processing();
    job.apply(&advance(Stage::Preprocessing, 20), t(2)).unwrap();
    job.apply(&JobEvent::Cancel, t(3)).unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!((job.stage, job.progress), (Stage::Preprocessing, 20));
    assert_eq!(job.finished_at, Some(t(3)));
}

// ----- illegal transitions ----------------------------------------------------------------

#[test]
fn pending_cannot_advance_complete_or_fail() {
    let mut job = pending_job();
    refused(&mut job, &advance(Stage::Preprocessing, 10));
    refused(&mut job, &JobEvent::Complete);
    refused(
        &mut job,
        &JobEvent::Fail {
            message: "x".into(),
        },
    );
}

#[test]
fn stages_never_go_back() {
    let mut job = processing();
    job.apply(&advance(Stage::Inference, 50), t(2)).unwrap();
    refused(&mut job, &advance(Stage::Preprocessing, 60));
    refused(&mut job, &advance(Stage::Initializing, 60));
}

#[test]
fn only_complete_reaches_100_or_the_completed_stage() {
    let mut job = processing();
    refused(&mut job, &advance(Stage::Completed, 50));
    refused(&mut job, &advance(Stage::Postprocessing, 100));
    refused(&mut job, &advance(Stage::Postprocessing, 255));
}

#[test]
fn terminal_states_refuse_every_event() {
    let events = [
        JobEvent::Start,
        advance(Stage::Postprocessing, 99),
        JobEvent::Complete,
        JobEvent::Fail {
            message: "x".into(),
        },
        JobEvent::Cancel,
    ];
    let mut completed = processing();
    completed.apply(&JobEvent::Complete, t(2)).unwrap();
    let mut failed = processing();
    failed
        .apply(
            &JobEvent::Fail {
                message: "x".into(),
            },
            t(2),
        )
        .unwrap();
    let mut cancelled = pending_job();
    cancelled.apply(&JobEvent::Cancel, t(2)).unwrap();
    for mut job in [completed, failed, cancelled] {
        for event in &events {
            refused(&mut job, event);
        }
    }
}

#[test]
fn timestamps_follow_the_events() {
    let mut job = pending_job();
    let created = job.created_at;
    job.apply(&JobEvent::Start, created + Duration::seconds(5))
        .unwrap();
    job.apply(&JobEvent::Complete, created + Duration::seconds(9))
        .unwrap();
    assert_eq!(job.created_at, created);
    assert_eq!(job.started_at, Some(created + Duration::seconds(5)));
    assert_eq!(job.finished_at, Some(created + Duration::seconds(9)));
    assert_eq!(job.updated_at, created + Duration::seconds(9));
}
