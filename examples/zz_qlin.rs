use referdino::ops::linear::{linear, Epilogue, PackedWeights};
use referdino::ops::qlinear::*;
use std::time::Instant;
fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for &(m, k, n) in &[(14400usize, 96usize, 384usize), (14400, 384, 96), (4820, 256, 2048), (4820, 2048, 256), (900, 256, 256)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 2003) as f32 / 1001.5 - 1.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 2011) as f32 / 1005.5 - 1.0).collect();
        let b = vec![0.1f32; n];
        let pw = PackedWeights::pack(&w, k, n).unwrap();
        let sw = vec![1.0f32 / 127.0; n];
        let qw = QPackedWeights::quantize(&w, k, n, &sw).unwrap();
        let mut y = vec![0.0f32; m * n];
        let mut xq = vec![0u8; m * k];
        pool.install(|| {
            let ep = Epilogue { bias: Some(&b), ..Default::default() };
            for _ in 0..2 { linear(&x, m, &pw, ep, &mut y).unwrap(); }
            let t = Instant::now(); for _ in 0..5 { linear(&x, m, &pw, ep, &mut y).unwrap(); } let f = t.elapsed().as_secs_f64() / 5.0;
            for _ in 0..2 { quantize_u8(&x, 1.0/127.0, &mut xq).unwrap(); qlinear(&xq, m, &qw, 1.0/127.0, Some(&b), &mut y).unwrap(); }
            let t = Instant::now(); for _ in 0..5 { quantize_u8(&x, 1.0/127.0, &mut xq).unwrap(); } let q = t.elapsed().as_secs_f64() / 5.0;
            let t = Instant::now(); for _ in 0..5 { qlinear(&xq, m, &qw, 1.0/127.0, Some(&b), &mut y).unwrap(); } let i = t.elapsed().as_secs_f64() / 5.0;
            let gm = (m * k * n) as f64 / 1e9;
            println!("{m}x{k}x{n}: f32 {:.2} ms ({:.0} GMAC/s)  quant {:.2} ms  int8 {:.2} ms ({:.0} GMAC/s)  ratio {:.2}", f*1e3, gm/f, q*1e3, i*1e3, gm/i, f/(q+i));
        });
    }
}
