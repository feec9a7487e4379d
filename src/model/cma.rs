//! Cross-modal attention (eqs 1–5): windowed multi-head attention with queries
//! from the primary map and keys/values from the auxiliary map.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use super::layers::{
    channels_first, channels_last, pad_to_windows, window_and_shift, window_partition,
    window_reverse,
};
use super::window_attention::window_attention;

#[derive(Module, Debug)]
pub struct Cma {
    pub norm_primary: LayerNorm,
    pub norm_auxiliary: LayerNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub heads: usize,
    pub window: usize,
}

impl Cma {
    pub fn new(dim: usize, heads: usize, window: usize, device: &Device) -> Self {
        Cma {
            norm_primary: LayerNormConfig::new(dim).init(device),
            norm_auxiliary: LayerNormConfig::new(dim).init(device),
            q: LinearConfig::new(dim, dim).init(device),
            k: LinearConfig::new(dim, dim).init(device),
            v: LinearConfig::new(dim, dim).init(device),
            out: LinearConfig::new(dim, dim).init(device),
            heads,
            window,
        }
    }

    /// primary, auxiliary: [B, C, D, H, W] (same shape) → F_cross [B, C, D, H, W]
    pub fn forward(&self, primary: Tensor<5>, auxiliary: Tensor<5>) -> Tensor<5> {
        self.forward_many(primary, auxiliary, 1)
    }

    /// F_cross of one primary map against `k` auxiliary maps stacked along the batch
    /// axis (`auxiliaries` [k·B, C, D, H, W], map i in rows i·B..(i+1)·B) →
    /// [k·B, C, D, H, W] in the same order. The primary's normalisation, windows and
    /// queries are computed once, and the k attentions run as one batch: the same
    /// numbers as k calls of `forward`, in a few large operations instead of many
    /// small ones.
    pub fn forward_many(&self, primary: Tensor<5>, auxiliaries: Tensor<5>, k: usize) -> Tensor<5> {
        let [b, c, d, h, w] = primary.dims();
        assert_eq!(auxiliaries.dims()[0], k * b, "k auxiliary maps per primary");
        let (ws, _) = window_and_shift([d, h, w], self.window, 0);
        let p = pad_to_windows(self.norm_primary.forward(channels_last(primary)), ws);
        let a = pad_to_windows(self.norm_auxiliary.forward(channels_last(auxiliaries)), ws);
        let [_, dp, hp, wp, _] = p.dims();
        let pw = window_partition(p, ws); // W(F_CT)
        let aw = window_partition(a, ws); // W(F_MRI), k groups of the primary's windows
        let heads = self.heads;
        let hd = c / heads;
        let q = self.q.forward(pw); // eq. 1
        let k_ = self.k.forward(aw.clone()); // eq. 2
        let v = self.v.forward(aw); // eq. 3
        // eq. 4, the k auxiliaries of a window attended to with its one set of queries
        let o = window_attention(q, k_, v, heads, 1.0 / (hd as f64).sqrt(), None, None);
        let o = self.out.forward(o); // eq. 5
        let mut y = window_reverse(o, ws, k * b, [dp, hp, wp]);
        if [dp, hp, wp] != [d, h, w] {
            y = y.narrow(1, 0, d).narrow(2, 0, h).narrow(3, 0, w);
        }
        channels_first(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::vals;
    use burn::tensor::Distribution;

    #[test]
    fn k_auxiliaries_in_one_batch_equal_k_separate_calls() {
        let dev = Device::default();
        let cma = Cma::new(8, 2, 4, &dev);
        let p = Tensor::<5>::random([2, 8, 4, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let aux: Vec<Tensor<5>> = (0..3)
            .map(|_| Tensor::<5>::random([2, 8, 4, 4, 4], Distribution::Normal(0.0, 1.0), &dev))
            .collect();
        let many = cma.forward_many(p.clone(), Tensor::cat(aux.clone(), 0), 3);
        for (i, a) in aux.into_iter().enumerate() {
            let one = vals(cma.forward(p.clone(), a));
            let got = vals(many.clone().narrow(0, 2 * i, 2));
            let err = one
                .iter()
                .zip(&got)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "map {i}: max difference {err}");
        }
    }

    /// One query token's softmax attention over a window's keys and values, head by head.
    fn naive_attend(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], heads: usize) -> Vec<f32> {
        let c = q.len();
        let hd = c / heads;
        let mut o = vec![0.0f32; c];
        for hh in 0..heads {
            let r = hh * hd..(hh + 1) * hd;
            let s: Vec<f32> = k
                .iter()
                .map(|kj| r.clone().map(|e| q[e] * kj[e]).sum::<f32>() / (hd as f32).sqrt())
                .collect();
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for (j, vj) in v.iter().enumerate() {
                for ee in r.clone() {
                    o[ee] += e[j] / z * vj[ee];
                }
            }
        }
        o
    }

    /// Plain loops: for each window, layer-normalise the tokens, project, and run
    /// softmax attention head by head, exactly as eqs 1–5 read.
    fn naive(cma: &Cma, p: &[f32], a: &[f32], c: usize, dims: [usize; 3], w: usize) -> Vec<f32> {
        let lin = |l: &Linear| -> (Vec<f32>, Vec<f32>) {
            (
                vals(l.weight.val()),
                l.bias.as_ref().map(|b| vals(b.val())).unwrap(),
            )
        };
        let ln = |l: &LayerNorm| -> (Vec<f32>, Vec<f32>) {
            (vals(l.gamma.val()), vals(l.beta.as_ref().unwrap().val()))
        };
        let (wq, bq) = lin(&cma.q);
        let (wk, bk) = lin(&cma.k);
        let (wv, bv) = lin(&cma.v);
        let (wo, bo) = lin(&cma.out);
        let (gp, bp) = ln(&cma.norm_primary);
        let (ga, ba) = ln(&cma.norm_auxiliary);
        let [d, h, wd] = dims;
        let ws: [usize; 3] = dims.map(|n| n.min(w));
        let padded: Vec<usize> = (0..3).map(|i| dims[i].div_ceil(ws[i]) * ws[i]).collect();
        // token (channels-first input [C, D, H, W]) normalised; zero outside the map
        let token = |x: &[f32], g: &[f32], bt: &[f32], z: usize, y: usize, xx: usize| -> Vec<f32> {
            if z >= d || y >= h || xx >= wd {
                return vec![0.0; c];
            }
            let t: Vec<f32> = (0..c)
                .map(|ch| x[((ch * d + z) * h + y) * wd + xx])
                .collect();
            let m = t.iter().sum::<f32>() / c as f32;
            let var = t.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c as f32;
            t.iter()
                .enumerate()
                .map(|(i, v)| (v - m) / (var + 1e-5).sqrt() * g[i] + bt[i])
                .collect()
        };
        let proj = |x: &[f32], wt: &[f32], b: &[f32]| -> Vec<f32> {
            // burn Linear: y = x · W + b, W is [in, out]
            (0..c)
                .map(|o| b[o] + (0..c).map(|i| x[i] * wt[i * c + o]).sum::<f32>())
                .collect()
        };
        let heads = cma.heads;
        let mut out = vec![0.0f32; c * d * h * wd];
        for z0 in (0..padded[0]).step_by(ws[0]) {
            for y0 in (0..padded[1]).step_by(ws[1]) {
                for x0 in (0..padded[2]).step_by(ws[2]) {
                    let pos: Vec<[usize; 3]> = (0..ws[0])
                        .flat_map(|a| {
                            (0..ws[1]).flat_map(move |b| {
                                (0..ws[2]).map(move |cc| [z0 + a, y0 + b, x0 + cc])
                            })
                        })
                        .collect();
                    let q: Vec<Vec<f32>> = pos
                        .iter()
                        .map(|p3| proj(&token(p, &gp, &bp, p3[0], p3[1], p3[2]), &wq, &bq))
                        .collect();
                    let ta: Vec<Vec<f32>> = pos
                        .iter()
                        .map(|p3| token(a, &ga, &ba, p3[0], p3[1], p3[2]))
                        .collect();
                    let k: Vec<Vec<f32>> = ta.iter().map(|t| proj(t, &wk, &bk)).collect();
                    let v: Vec<Vec<f32>> = ta.iter().map(|t| proj(t, &wv, &bv)).collect();
                    for (i, p3) in pos.iter().enumerate() {
                        let o = naive_attend(&q[i], &k, &v, heads);
                        let y = proj(&o, &wo, &bo);
                        if p3[0] < d && p3[1] < h && p3[2] < wd {
                            for ch in 0..c {
                                out[((ch * d + p3[0]) * h + p3[1]) * wd + p3[2]] = y[ch];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn cma_equals_naive_windowed_attention() {
        let dev = Device::flex();
        for (dims, heads) in [([8usize, 8, 4], 2usize), ([6, 5, 3], 3)] {
            let c = 6;
            let cma = Cma::new(c, heads, 4, &dev);
            let shape = [1, c, dims[0], dims[1], dims[2]];
            let p = Tensor::<5>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
            let a = Tensor::<5>::random(shape, Distribution::Normal(0.5, 2.0), &dev);
            let got = vals(cma.forward(p.clone(), a.clone()));
            let want = naive(&cma, &vals(p), &vals(a), c, dims, 4);
            let err = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{dims:?}: max error {err}");
        }
    }
}
