//! `merged_4bit`: our requantization against PEFT's merge into bitsandbytes `Linear4bit`
//! (`ref_merged_4bit*`, made on CPU). The 4-bit codes must be identical; the double-quant
//! absmax codes may differ by one 8-bit step where bitsandbytes' CPU search disagrees with the
//! documented rule near a midpoint; dequantized values must agree within one 4-bit step.

use std::collections::BTreeMap;
use std::path::Path;

use loraweld::format::bnb::{AbsmaxRef, QuantState, QuantView};
use loraweld::options::FloatDtype;

use crate::util::{all_tensors, fixtures, SaveCase, Saved, Workdir};

type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

/// `loraweld save ADAPTER OUT --save-method merged_4bit ARGS…`.
fn merged_4bit(case: SaveCase) -> Saved {
    case.args(["--save-method", "merged_4bit"]).run()
}

/// Dequantizes `P` of a checkpoint with our decoder; returns values and per-element absmax.
fn dequant(t: &Tensors, p: &str) -> (Vec<f32>, Vec<f32>, QuantState) {
    let (key, json) = t
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{p}.quant_state.")))
        .unwrap();
    let st = QuantState::parse(Path::new("x"), key, &json.2).unwrap();
    let get = |s: &str| &t[&format!("{p}{s}")].2;
    let absmax = match st.nested {
        Some((nbs, offset)) => AbsmaxRef::Nested {
            codes: get(".absmax"),
            nested_absmax: get(".nested_absmax"),
            nested_map: get(".nested_quant_map"),
            nested_blocksize: nbs,
            offset,
        },
        None => AbsmaxRef::Plain(get(".absmax")),
    };
    let view = QuantView {
        codes: get(""),
        absmax,
        quant_map: get(".quant_map"),
        blocksize: st.blocksize,
        dtype: FloatDtype::F32,
    };
    let n = st.numel() as usize;
    let mut out = vec![0f32; n];
    view.decode(0, &mut out);
    let am: Vec<f32> = (0..n).map(|k| view.absmax.get(k / st.blocksize as usize)).collect();
    (out, am, st)
}

fn compare(ours: &Path, reference: &Path, quant: &str) {
    let a = all_tensors(ours);
    let b = all_tensors(reference);
    let mut names: Vec<&String> = b.keys().collect();
    names.sort();
    let ours_names: Vec<&String> = a.keys().collect();
    assert_eq!(ours_names, names, "same tensor names as PEFT's 4-bit save");
    let (mut checked, mut nested_diff, mut nested_total, mut worst) = (0, 0, 0, 0f32);
    for (k, (dt, shape, bytes)) in &b {
        let Some(p) = k.strip_suffix(&format!(".quant_state.bitsandbytes__{quant}")) else {
            let quant_piece = k.contains(".weight.") || (a[k].0 == "U8" && a.contains_key(&format!("{k}.absmax")));
            if !quant_piece {
                assert_eq!(
                    &a[k],
                    &(dt.clone(), shape.clone(), bytes.clone()),
                    "`{k}` must pass through"
                );
            }
            continue;
        };
        let (x, xam, xs) = dequant(&a, p);
        let (y, yam, ys) = dequant(&b, p);
        assert_eq!(
            (xs.quant_type, xs.blocksize, &xs.shape),
            (ys.quant_type, ys.blocksize, &ys.shape),
            "`{p}`"
        );
        assert!(a[p].2 == b[p].2, "`{p}`: 4-bit codes differ from PEFT's");
        if let (Some(xn), Some(yn)) = (xs.nested, ys.nested) {
            let (ca, cb) = (&a[&format!("{p}.absmax")].2, &b[&format!("{p}.absmax")].2);
            for (u, v) in ca.iter().zip(cb) {
                assert!(u.abs_diff(*v) <= 1, "`{p}`: nested absmax codes {u} vs {v}");
                nested_diff += (u != v) as usize;
            }
            nested_total += ca.len();
            assert_eq!(xn.1, yn.1, "`{p}`: double-quant offset (torch.mean)");
            assert!(
                a[&format!("{p}.nested_absmax")].2 == b[&format!("{p}.nested_absmax")].2,
                "`{p}`: nested_absmax"
            );
        }
        // One 4-bit step is at most 0.3039 * absmax (the widest NF4 gap, -1.0 to -0.6962).
        for ((u, v), (ua, va)) in x.iter().zip(&y).zip(xam.iter().zip(&yam)) {
            let step = 0.3039 * ua.max(*va);
            assert!(
                (u - v).abs() <= step,
                "`{p}`: {u} vs {v} differ by more than one step {step}"
            );
            worst = worst.max((u - v).abs());
        }
        checked += 1;
    }
    assert_eq!(checked, 21, "every LoRA'd projection is requantized");
    eprintln!("merged_4bit vs PEFT: {checked} weights, codes identical, nested absmax codes differing {nested_diff}/{nested_total}, max |dequant diff| {worst}");
    assert!(
        nested_diff * 100 <= nested_total,
        "nested absmax codes: {nested_diff}/{nested_total} differ"
    );
}

#[test]
fn nf4_double_quant_matches_peft_merge_into_linear4bit() {
    let s = merged_4bit(SaveCase::new(fixtures().join("lora_on_nf4")));
    compare(&s.out, &fixtures().join("ref_merged_4bit"), "nf4");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(s.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
}

#[test]
fn fp4_matches_peft_merge_into_linear4bit() {
    let s = merged_4bit(SaveCase::new(fixtures().join("lora_on_nf4")).base(fixtures().join("base_fp4")));
    compare(&s.out, &fixtures().join("ref_merged_4bit_fp4"), "fp4");
}

/// From a 16-bit base, every Linear weight is quantized (NF4 + double quant by default) and
/// the head and embeddings stay 16-bit; dequantizing gives back the 16-bit merge within a step.
#[test]
fn from_bf16_base_quantizes_linears_and_keeps_the_head() {
    let s = merged_4bit(SaveCase::new(fixtures().join("lora")));
    let q = all_tensors(&s.out);
    let m16 = all_tensors(&fixtures().join("ref_merged_16bit"));
    for k in ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(q[k], m16[k], "`{k}` stays 16-bit and unchanged");
    }
    let p = "model.layers.1.mlp.down_proj.weight";
    let (x, am, st) = dequant(&q, p);
    assert_eq!(st.dtype, FloatDtype::Bf16);
    let orig: Vec<f32> = m16[p]
        .2
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    for ((u, v), a) in x.iter().zip(&orig).zip(&am) {
        // Nearest rounding is within half a step of the true scale; the double-quant absmax is
        // itself rounded, so allow one whole step.
        assert!((u - v).abs() <= 0.3039 * a, "{u} vs {v} absmax {a}");
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(s.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_use_double_quant"], true);
}

/// The library refuses a blocksize bitsandbytes does not take before writing anything, as the
/// CLI's `--blocksize` does.
#[test]
fn library_refuses_a_blocksize_that_is_not_a_power_of_two() {
    let w = Workdir::new();
    let out = w.join("m4");
    for bs in [48u64, 16, 8192] {
        let mut o = loraweld::SaveOptions::new(fixtures().join("lora"), &out);
        o.save_method = loraweld::SaveMethod::Merged4bit;
        o.blocksize = bs;
        let e = loraweld::save(&o).expect_err("a bad blocksize is refused");
        assert!(
            matches!(e, loraweld::error::Error::Usage(ref m) if m.contains(&format!("blocksize {bs}"))),
            "{e}"
        );
        assert!(!out.exists(), "nothing is written");
    }
}
