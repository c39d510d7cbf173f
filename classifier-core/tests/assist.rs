//! Cooperative intra-operator parallelism (`model::AssistTeam`): an inference whose kernels
//! share their parts with a helping thread gives exactly the logits of the same inference on
//! one thread, for every model that tract loads, at batch 1 and 3, and the helper really ran
//! parts of it.
//!
//! Each output value is computed by the same instructions in the same order whichever thread
//! computes it (the kernels split by output channel or plane), so the comparison is bit for
//! bit, not within a tolerance.

mod common;

use std::sync::Arc;
use std::time::Duration;

use classifier_core::model::AssistTeam;

/// Wait (while leading) until the helper has joined.
fn wait_for_helper(team: &AssistTeam) {
    for _ in 0..20_000 {
        if team.helping() > 0 {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    panic!("the helper thread never started helping");
}

#[test]
fn assisted_inference_gives_the_same_logits_bit_for_bit() {
    let input = common::read_f32("inputs/chelsea.input.bin");
    let team = Arc::new(AssistTeam::new());
    let helper = team.spawn_helper();
    for version in [
        "shufflenet-v2-f32",
        "mobilenetv2-f32",
        "shufflenet-v2-qdq",
        "mobilenetv2-int8",
    ] {
        let classifier = common::classifier(version);
        let engine = classifier.engine();
        let batches: &[usize] = if engine.max_native_batch() >= 3 {
            &[1, 3]
        } else {
            &[1]
        };
        for &batch in batches {
            let tensor: Vec<f32> = input
                .iter()
                .copied()
                .cycle()
                .take(input.len() * batch)
                .collect();
            let alone = engine.run(tensor.clone(), batch).expect("run alone");
            let before = team.parts_helped();
            let assisted = team.lead(|| {
                wait_for_helper(&team);
                engine.run(tensor.clone(), batch).expect("run assisted")
            });
            let same = alone
                .iter()
                .zip(&assisted)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && alone.len() == assisted.len(),
                "{version} batch {batch}: assisted logits differ (max diff {})",
                common::max_abs_diff(&alone, &assisted)
            );
            if version == "shufflenet-v2-f32" || version == "mobilenetv2-f32" {
                // The float models run on our kernels, which share their parts.
                assert!(
                    team.parts_helped() > before,
                    "{version} batch {batch}: the helper ran no part"
                );
            }
        }
    }
    drop(helper);
}

#[test]
fn without_a_helper_a_leader_runs_everything_itself() {
    let input = common::read_f32("inputs/chelsea.input.bin");
    let classifier = common::classifier("shufflenet-v2-f32");
    let team = Arc::new(AssistTeam::new());
    let alone = classifier.engine().run(input.clone(), 1).expect("run");
    let led = team.lead(|| classifier.engine().run(input, 1).expect("run"));
    assert_eq!(alone, led);
    assert_eq!(team.parts_helped(), 0);
    assert!(!team.needs_help(), "leading ended with the call");
}
