//! Shared by the golden tests: replay a golden file and compare every field with the
//! tolerances of spec/golden/README.md.

use std::collections::BTreeMap;
use std::path::PathBuf;

use namm::policy::replay::{flatten, read_json, replay, Precision, ReplayOptions};
use serde_json::Value;

pub fn golden(name: &str) -> Value {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/golden")).join(name);
    read_json(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Worst absolute and relative (to max(1, |golden|)) differences per field.
#[derive(Default, Debug)]
pub struct Worst(pub BTreeMap<String, (f64, f64)>);

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

pub fn replay_and_compare(file: &str, precision: Precision) -> Worst {
    let doc = golden(file);
    let options = ReplayOptions {
        precision,
        params: None,
    };
    let out = replay(&doc, &options).unwrap_or_else(|e| panic!("{file}: {e}"));
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

pub fn check_f64(w: &Worst) {
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
pub fn check_f32(w: &Worst) {
    for (field, &(_, rel)) in &w.0 {
        assert!(rel <= 1e-5, "{field}: max relative |Δ| {rel:e} > 1e-5");
    }
}
