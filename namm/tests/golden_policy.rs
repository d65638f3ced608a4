//! Replays every golden policy file (spec/golden, produced by the reference implementation)
//! through the f64 and the f32 path and checks the tolerances of spec/golden/README.md.
//! Run with `--nocapture` to see the max |Δ| per field.

mod policy_golden;

use namm::policy::replay::{flatten, replay, Precision, ReplayOptions};
use namm::policy::{features, NammParams};
use namm::stats::NormStats;
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
    let e = replay(&doc, &ReplayOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("$.invocations[0].inputs[0].attn"), "{e}");
}

#[test]
fn kv_grouping_follows_from_the_kv_head_count() {
    let mut doc = golden("policy_i1_gqa_f64.json");
    let common = doc["common"].as_object_mut().unwrap();
    common.remove("kv_groups");
    common.insert("n_kv_heads".into(), 2.into());
    let got = replay(&doc, &ReplayOptions::default()).unwrap();
    let want = &doc["invocations"][0]["outputs"][0];
    let out = &got["invocations"][0]["outputs"][0];
    assert_eq!(out["retained_idxs"], want["retained_idxs"]);
    let (g, _) = flatten(&out["scores"], "scores").unwrap();
    let (w, _) = flatten(&want["scores"], "scores").unwrap();
    assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1e-10));
}

#[test]
fn a_parameter_file_replaces_the_recorded_parameters() {
    let mut doc = golden("policy_i1_gqa_f64.json");
    let (theta, _) = flatten(&doc["params_random"], "params_random").unwrap();
    let stats = &doc["norm_stats"];
    let field = |k: &str| flatten(&stats[k], k).unwrap().0;
    let file = NammParams {
        params: theta.iter().map(|&v| v as f32).collect(),
        stats: NormStats::new(
            field("output_mean"),
            field("output_var"),
            field("output_num")[0],
        )
        .unwrap(),
        metadata: Default::default(),
    };
    let want = doc["invocations"][0]["outputs"][0].clone();
    // Without its own parameters and statistics the recording cannot be replayed ...
    let top = doc.as_object_mut().unwrap();
    top.remove("params_random");
    top.remove("norm_stats");
    assert!(replay(&doc, &ReplayOptions::default()).is_err());
    // ... with the file's (θ rounded to f32) it selects the same tokens.
    let options = ReplayOptions {
        precision: Precision::F64,
        params: Some(file),
    };
    let got = replay(&doc, &options).unwrap();
    let out = &got["invocations"][0]["outputs"][0];
    assert_eq!(out["retained_idxs"], want["retained_idxs"]);
    let (g, _) = flatten(&out["scores"], "scores").unwrap();
    let (w, _) = flatten(&want["scores"], "scores").unwrap();
    assert!(g
        .iter()
        .zip(&w)
        .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
}
