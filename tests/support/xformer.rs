//! Helpers for the enhancer / query-selection / decoder stage tests: running a graph with taps and comparing
//! every tap against the fixture, and random transformer weights for configurations other than the fixture's.
#![allow(dead_code)]

use super::common::{assert_close, max_err};
use referdino::onnx::builder::Graph;
use referdino::onnx::run::run_plain;
use referdino::tensor::{DType, Data, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Runs `g` on `inputs` and returns every output by name.
pub fn run_named(g: Graph, inputs: &[Tensor]) -> BTreeMap<String, Tensor> {
    let names: Vec<String> = g.output_specs().iter().map(|s| s.name.clone()).collect();
    let out = run_plain(&g.to_bytes(), inputs).expect("tract run");
    names.into_iter().zip(out).collect()
}

/// Compares every output that has a fixture key: floats with the project tolerance, integers exactly.
/// Returns the number of keys compared.
pub fn compare_all(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) -> usize {
    let mut n = 0;
    for (k, v) in got {
        let Some(r) = want.get(k) else { continue };
        match r.dtype() {
            DType::I64 => {
                assert_eq!(v.shape(), r.shape(), "{k}: shape");
                assert_eq!(v.i64s().unwrap(), r.i64s().unwrap(), "{k}: indices differ");
                eprintln!("{k}: identical");
            }
            DType::Bool => panic!("{k}: unexpected bool tap"),
            _ => assert_close(k, v, r),
        }
        n += 1;
    }
    n
}

/// Max abs error of the first `l` entries of axis 1 of `got` against `want` (both `[B, Lx, ...]`).
pub fn max_err_prefix(got: &Tensor, want: &Tensor, axis1: usize) -> (f32, f32) {
    let g = slice_axis1(got, axis1);
    max_err(&g, want)
}

/// `x[:, :n, ...]` of an f32 or i64 tensor.
pub fn slice_axis1(x: &Tensor, n: usize) -> Tensor {
    let s = x.shape();
    let inner: usize = s[2..].iter().product();
    let mut shape = s.to_vec();
    shape[1] = n;
    match x.data() {
        Data::F32(v) => {
            let mut o = Vec::new();
            for b in 0..s[0] {
                let base = b * s[1] * inner;
                o.extend_from_slice(&v[base..base + n * inner]);
            }
            Tensor::from_f32(&shape, o).unwrap()
        }
        _ => panic!("slice_axis1: f32 only"),
    }
}

/// `x[:, :, :n]` of a rank-3 f32 tensor.
pub fn slice_last(x: &Tensor, n: usize) -> Tensor {
    let s = x.shape();
    let v = x.f32s().unwrap();
    let mut o = Vec::new();
    for r in 0..s[0] * s[1] {
        o.extend_from_slice(&v[r * s[2]..r * s[2] + n]);
    }
    Tensor::from_f32(&[s[0], s[1], n], o).unwrap()
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|_| self.uniform(lo, hi)).collect()).unwrap()
    }
}

/// Sizes of a random transformer.
pub struct XformerCfg {
    pub d: usize,
    pub heads: usize,
    pub ffn: usize,
    pub enc_layers: usize,
    pub dec_layers: usize,
    pub levels: usize,
    pub points: usize,
    pub num_queries: usize,
}

/// Random weights under the official keys of the encoder, the query selection and the decoder (LoRA
/// already folded, as the loader delivers them).
pub fn random_weights(c: &XformerCfg, seed: u64) -> HashMap<String, Tensor> {
    let mut r = Rng(seed);
    let mut m = HashMap::new();
    let d = c.d;
    let lin = |m: &mut HashMap<String, Tensor>, r: &mut Rng, k: &str, o: usize, i: usize| {
        let a = (3.0 / i as f32).sqrt();
        m.insert(format!("{k}.weight"), r.tensor(&[o, i], -a, a));
        m.insert(format!("{k}.bias"), r.tensor(&[o], -0.2, 0.2));
    };
    let ln = |m: &mut HashMap<String, Tensor>, r: &mut Rng, k: &str, n: usize| {
        m.insert(format!("{k}.weight"), r.tensor(&[n], 0.4, 0.9));
        m.insert(format!("{k}.bias"), r.tensor(&[n], -0.2, 0.2));
    };
    let mha = |m: &mut HashMap<String, Tensor>, r: &mut Rng, k: &str| {
        let a = (3.0 / d as f32).sqrt();
        m.insert(format!("{k}.in_proj_weight"), r.tensor(&[3 * d, d], -a, a));
        m.insert(format!("{k}.in_proj_bias"), r.tensor(&[3 * d], -0.2, 0.2));
    };
    let (h, l, p) = (c.heads, c.levels, c.points);
    for i in 0..c.enc_layers {
        let f = format!("transformer.encoder.fusion_layers.{i}");
        let e = c.ffn / 2;
        m.insert(format!("{f}.gamma_v"), r.tensor(&[d], 0.1, 0.5));
        m.insert(format!("{f}.gamma_l"), r.tensor(&[d], 0.1, 0.5));
        ln(&mut m, &mut r, &format!("{f}.layer_norm_v"), d);
        ln(&mut m, &mut r, &format!("{f}.layer_norm_l"), d);
        for n in ["v_proj", "l_proj", "values_v_proj", "values_l_proj"] {
            lin(&mut m, &mut r, &format!("{f}.attn.{n}"), e, d);
        }
        lin(&mut m, &mut r, &format!("{f}.attn.out_v_proj"), d, e);
        lin(&mut m, &mut r, &format!("{f}.attn.out_l_proj"), d, e);
        let t = format!("transformer.encoder.text_layers.{i}");
        mha(&mut m, &mut r, &format!("{t}.self_attn"));
        lin(&mut m, &mut r, &format!("{t}.self_attn.out_proj"), d, d);
        lin(&mut m, &mut r, &format!("{t}.linear1"), c.ffn / 2, d);
        lin(&mut m, &mut r, &format!("{t}.linear2"), d, c.ffn / 2);
        ln(&mut m, &mut r, &format!("{t}.norm1"), d);
        ln(&mut m, &mut r, &format!("{t}.norm2"), d);
        let x = format!("transformer.encoder.layers.{i}");
        deform(&mut m, &mut r, &format!("{x}.self_attn"), d, h, l, p);
        lin(&mut m, &mut r, &format!("{x}.linear1"), c.ffn, d);
        lin(&mut m, &mut r, &format!("{x}.linear2"), d, c.ffn);
        ln(&mut m, &mut r, &format!("{x}.norm1"), d);
        ln(&mut m, &mut r, &format!("{x}.norm2"), d);
    }
    lin(&mut m, &mut r, "transformer.enc_output", d, d);
    ln(&mut m, &mut r, "transformer.enc_output_norm", d);
    lin(
        &mut m,
        &mut r,
        "transformer.enc_out_bbox_embed.layers.0",
        d,
        d,
    );
    lin(
        &mut m,
        &mut r,
        "transformer.enc_out_bbox_embed.layers.1",
        d,
        d,
    );
    lin(
        &mut m,
        &mut r,
        "transformer.enc_out_bbox_embed.layers.2",
        4,
        d,
    );
    m.insert(
        "transformer.tgt_embed.weight".into(),
        r.tensor(&[c.num_queries, d], -1.0, 1.0),
    );
    lin(
        &mut m,
        &mut r,
        "transformer.decoder.ref_point_head.layers.0",
        d,
        2 * d,
    );
    lin(
        &mut m,
        &mut r,
        "transformer.decoder.ref_point_head.layers.1",
        d,
        d,
    );
    ln(&mut m, &mut r, "transformer.decoder.norm", d);
    for i in 0..c.dec_layers {
        let x = format!("transformer.decoder.layers.{i}");
        for a in ["self_attn", "ca_text"] {
            mha(&mut m, &mut r, &format!("{x}.{a}"));
            lin(&mut m, &mut r, &format!("{x}.{a}.out_proj"), d, d);
        }
        deform(&mut m, &mut r, &format!("{x}.cross_attn"), d, h, l, p);
        lin(&mut m, &mut r, &format!("{x}.linear1"), c.ffn, d);
        lin(&mut m, &mut r, &format!("{x}.linear2"), d, c.ffn);
        for n in ["norm1", "norm2", "norm3", "catext_norm"] {
            ln(&mut m, &mut r, &format!("{x}.{n}"), d);
        }
    }
    // one shared box head, stored under every layer's name (as the official aliases)
    let mut bb = HashMap::new();
    lin(&mut bb, &mut r, "layers.0", d, d);
    lin(&mut bb, &mut r, "layers.1", d, d);
    lin(&mut bb, &mut r, "layers.2", 4, d);
    for i in 0..c.dec_layers {
        for (k, v) in &bb {
            m.insert(format!("transformer.decoder.bbox_embed.{i}.{k}"), v.clone());
        }
    }
    m
}

fn deform(
    m: &mut HashMap<String, Tensor>,
    r: &mut Rng,
    k: &str,
    d: usize,
    h: usize,
    l: usize,
    p: usize,
) {
    let a = (3.0 / d as f32).sqrt();
    let mut put = |n: &str, o: usize, lo: f32, hi: f32| {
        m.insert(format!("{k}.{n}.weight"), r.tensor(&[o, d], -a, a));
        m.insert(format!("{k}.{n}.bias"), r.tensor(&[o], lo, hi));
    };
    put("sampling_offsets", h * l * p * 2, -3.0, 3.0);
    put("attention_weights", h * l * p, -0.5, 0.5);
    put("value_proj", d, -0.2, 0.2);
    put("output_proj", d, -0.2, 0.2);
}

/// A bool tensor.
pub fn bools(shape: &[usize], v: Vec<bool>) -> Tensor {
    Tensor::new(shape.to_vec(), Data::Bool(v)).unwrap()
}

/// Negates a bool tensor.
pub fn not(t: &Tensor) -> Tensor {
    match t.data() {
        Data::Bool(v) => bools(t.shape(), v.iter().map(|b| !b).collect()),
        _ => panic!("not: bool only"),
    }
}
