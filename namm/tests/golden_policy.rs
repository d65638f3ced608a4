//! Replays every golden policy file (spec/golden, produced by the reference implementation)
//! through the f64 and the f32 path and checks the tolerances of spec/golden/README.md.
//! Run with `--nocapture` to see the max |Δ| per field.

mod policy_golden;

use namm::policy::features;
use namm::policy::replay::{flatten, replay, Precision};
use policy_golden::{check_f32, check_f64, golden, replay_and_compare};

#[test]
fn i1_golden_f64_path_matches_reference() {
    check_f64(&replay_and_compare("policy_i1_f64.json.gz", Precision::F64));
}

#[test]
fn i1_golden_f32_path_matches_reference() {
    check_f32(&replay_and_compare("policy_i1_f64.json.gz", Precision::F32));
}

#[test]
fn gqa_golden_f64_path_matches_reference() {
    check_f64(&replay_and_compare(
        "policy_i1_gqa_f64.json",
        Precision::F64,
    ));
}

#[test]
fn gqa_golden_f32_path_matches_reference() {
    check_f32(&replay_and_compare(
        "policy_i1_gqa_f64.json",
        Precision::F32,
    ));
}

/// Compared after rounding to f32: the tables are f32 values, and serde_json's default float
/// parsing may be 1 ulp off in f64.
#[test]
fn constant_tables_equal_the_reference_tables() {
    let doc = golden("policy_i1_f64.json.gz");
    let (window, _) = flatten(&doc["common"]["hann_window"], "hann_window").unwrap();
    let window: Vec<f32> = window.iter().map(|&v| v as f32).collect();
    assert_eq!(features::HANN_WINDOW.to_vec(), window);
    let (rows, shape) = flatten(&doc["common"]["recency_table_first_rows"], "recency").unwrap();
    assert_eq!(shape, vec![200, features::RECENCY_DIM]);
    for (age, want) in rows.chunks(features::RECENCY_DIM).enumerate() {
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_eq!(
            features::recency_row(age).to_vec(),
            want,
            "recency row {age}"
        );
    }
}

#[test]
fn replay_reports_an_inconsistent_recording_by_path() {
    let mut doc = golden("policy_i1_gqa_f64.json");
    doc["invocations"][0]["inputs"][0]["attn"][0][0]
        .as_array_mut()
        .unwrap()
        .pop();
    let e = replay(&doc, Precision::F64).unwrap_err().to_string();
    assert!(e.contains("$.invocations[0].inputs[0].attn"), "{e}");
}
