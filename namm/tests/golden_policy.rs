//! Replays every golden policy file (spec/golden, produced by the reference implementation)
//! through the f64 and the f32 path and checks the tolerances of spec/golden/README.md.
//! Run with `--nocapture` to see the max |Δ| per field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use namm::policy::features;
use namm::policy::replay::{flatten, read_json, replay, Precision};
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/golden")).join(name);
    read_json(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Worst absolute and relative (to max(1, |golden|)) differences per field.
#[derive(Default, Debug)]
struct Worst(BTreeMap<String, (f64, f64)>);

impl Worst {
    fn numbers(&mut self, field: &str, got: &Value, want: &Value) {
        let (g, gs) = flatten(got, field).unwrap();
        let (w, ws) = flatten(want, field).unwrap();
        assert_eq!(gs, ws, "{field}: shape");
        let e = self.0.entry(field.to_string()).or_default();
        for (a, b) in g.iter().zip(&w) {
            let d = (a - b).abs();
            assert!(d.is_finite(), "{field}: {a} vs {b}");
            e.0 = e.0.max(d);
            e.1 = e.1.max(d / b.abs().max(1.0));
        }
    }

    fn exact(&mut self, field: &str, got: &Value, want: &Value, context: &str) {
        assert_eq!(got, want, "{field} differs at {context}");
        self.0.entry(field.to_string()).or_default();
    }
}

const STAT_KEYS: [&str; 6] = [
    "online_new_output_mean",
    "online_new_output_var",
    "online_new_output_num",
    "output_mean",
    "output_var",
    "output_num",
];

fn compare_pass(got: &Value, want: &Value, pass: &str, w: &mut Worst) {
    let gi = got["invocations"].as_array().unwrap();
    let wi = want["invocations"].as_array().unwrap();
    assert_eq!(gi.len(), wi.len(), "{pass}: invocation count");
    for (t, (g, e)) in gi.iter().zip(wi).enumerate() {
        let go = g["outputs"].as_array().unwrap();
        let eo = e["outputs"].as_array().unwrap();
        assert_eq!(go.len(), eo.len());
        for (l, (a, b)) in go.iter().zip(eo).enumerate() {
            let at = format!("{pass} invocation {t} layer {l}");
            assert_eq!(a["n_all"], b["n_all"], "{at}");
            for f in ["spec_ema_raw", "features", "scores"] {
                w.numbers(f, &a[f], &b[f]);
            }
            w.exact(
                "retained_idxs",
                &a["retained_idxs"],
                &b["retained_idxs"],
                &at,
            );
            w.exact(
                "kept_positions",
                &a["kept_positions"],
                &b["kept_positions"],
                &at,
            );
        }
    }
    for key in ["norm_stats_after", "norm_stats_after_merge"] {
        if let Some(s) = want.get(key) {
            for k in STAT_KEYS {
                w.numbers(&format!("{key}.{k}"), &got[key][k], &s[k]);
            }
        }
    }
}

fn replay_and_compare(file: &str, precision: Precision) -> Worst {
    let doc = golden(file);
    let out = replay(&doc, precision).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut worst = Worst::default();
    if doc.get("invocations").is_some() {
        compare_pass(&out, &doc, file, &mut worst);
    } else {
        let passes: Vec<&String> = doc
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.get("invocations").is_some())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(passes.len(), 3, "{file}: passes A, B and C");
        for p in passes {
            compare_pass(&out[p.as_str()], &doc[p.as_str()], p, &mut worst);
        }
    }
    println!("{file} {precision:?}:");
    for (k, (abs, rel)) in &worst.0 {
        println!("  {k:45} max|Δ| {abs:.3e}  max rel {rel:.3e}");
    }
    worst
}

fn check_f64(w: &Worst) {
    for (field, &(abs, _)) in &w.0 {
        let tol = match field.as_str() {
            "scores" => 1e-10,
            f if f.starts_with("norm_stats") => 1e-12,
            _ => 1e-12,
        };
        assert!(abs <= tol, "{field}: max |Δ| {abs:e} > {tol:e}");
    }
}

/// f32: ~1e-5 relative (to max(1, |value|)) on spectra, features, scores and statistics;
/// kept sets identical (checked exactly while comparing).
fn check_f32(w: &Worst) {
    for (field, &(_, rel)) in &w.0 {
        assert!(rel <= 1e-5, "{field}: max relative |Δ| {rel:e} > 1e-5");
    }
}

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
