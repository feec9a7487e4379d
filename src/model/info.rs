//! Parameter count and FLOPs of one forward pass, counted analytically from the
//! layer shapes. FLOPs count 2 per multiply-add in convolutions, transposed
//! convolutions, linear layers and the attention matmuls (QKᵀ and AV);
//! normalisation, activations, softmax and rotations are left out.

use super::config::{EncoderWeights, ModelConfig, PoseAlignTarget};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Part {
    pub name: String,
    pub params: u64,
    pub flops: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModelInfo {
    pub parts: Vec<Part>,
}

impl ModelInfo {
    pub fn params(&self) -> u64 {
        self.parts.iter().map(|p| p.params).sum()
    }
    pub fn flops(&self) -> u64 {
        self.parts.iter().map(|p| p.flops).sum()
    }
}

fn conv(cin: u64, cout: u64, k: u64, bias: bool, vox_out: u64) -> (u64, u64) {
    (
        cin * cout * k * k * k + if bias { cout } else { 0 },
        2 * cin * cout * k * k * k * vox_out,
    )
}
fn linear(i: u64, o: u64, bias: bool, tokens: u64) -> (u64, u64) {
    (i * o + if bias { o } else { 0 }, 2 * i * o * tokens)
}
fn add(acc: &mut (u64, u64), x: (u64, u64)) {
    acc.0 += x.0;
    acc.1 += x.1;
}

/// (padded token count, tokens per window) of a cubic map of edge `n` under window `w`.
fn windows(n: u64, w: u64) -> (u64, u64) {
    let ws = n.min(w);
    let padded = n.div_ceil(ws) * ws;
    (padded.pow(3), ws.pow(3))
}

fn res_block(cin: u64, cout: u64, vox: u64) -> (u64, u64) {
    // instance norms on a single-voxel map are the identity and carry no parameters
    let norm = if vox == 1 { 0 } else { 2 * cout };
    let mut a = (0, 0);
    add(&mut a, conv(cin, cout, 3, false, vox));
    add(&mut a, conv(cout, cout, 3, false, vox));
    a.0 += 2 * norm;
    if cin != cout {
        add(&mut a, conv(cin, cout, 1, false, vox));
        a.0 += norm;
    }
    a
}

fn swin_encoder(cfg: &ModelConfig) -> (u64, u64) {
    let c = cfg.feature_size as u64;
    let p = cfg.patch as u64;
    let w = cfg.window as u64;
    let r = cfg.mlp_ratio as u64;
    let mut a = conv(cfg.in_channels as u64, c, 2, true, (p / 2).pow(3));
    for l in 0..4 {
        let d = cfg.channels(l) as u64;
        let h = cfg.heads[l] as u64;
        let n = p >> (l + 1);
        let t = n.pow(3);
        let (tp, nw) = windows(n, w);
        for _ in 0..cfg.depths[l] {
            a.0 += 4 * d; // two layer norms
            add(&mut a, linear(d, 3 * d, true, tp));
            add(&mut a, linear(d, d, true, tp));
            a.0 += (2 * w - 1).pow(3) * h; // relative position bias table
            a.1 += 4 * nw * d * tp; // QKᵀ and AV over all windows
            add(&mut a, linear(d, r * d, true, t));
            add(&mut a, linear(r * d, d, true, t));
        }
        let m = n.div_ceil(2).pow(3);
        a.0 += 16 * d; // layer norm over 8C
        add(&mut a, linear(8 * d, 2 * d, false, m));
    }
    a
}

fn cma(cfg: &ModelConfig, l: usize) -> (u64, u64) {
    let d = cfg.channels(l) as u64;
    let n = (cfg.patch as u64) >> (l + 1);
    let (tp, nw) = windows(n, cfg.window as u64);
    let runs = match cfg.pose_align_target {
        PoseAlignTarget::Auxiliary => cfg.k_sel as u64,
        PoseAlignTarget::Cross => 1,
    };
    let mut a = (4 * d, 0); // two layer norms
    for _ in 0..4 {
        let x = linear(d, d, true, tp);
        a.0 += x.0;
        a.1 += x.1 * runs;
    }
    a.1 += 4 * nw * d * tp * runs;
    a
}

fn decoder(cfg: &ModelConfig) -> (u64, u64) {
    let c = cfg.feature_size as u64;
    let p = cfg.patch as u64;
    let ch = |l: usize| cfg.channels(l) as u64;
    let vox = |l: u32| (p >> l).pow(3);
    let mut a = res_block(cfg.in_channels as u64, c, vox(0));
    for l in 0..4 {
        add(&mut a, res_block(ch(l), ch(l), vox(l as u32 + 1)));
    }
    add(&mut a, res_block(ch(4), ch(4), vox(5)));
    // up blocks: (cin, cout, output level)
    let ups = [
        (ch(4), ch(3), 4u32),
        (ch(3), ch(2), 3),
        (ch(2), ch(1), 2),
        (ch(1), c, 1),
        (c, c, 0),
    ];
    for (cin, cout, lvl) in ups {
        a.0 += cin * cout * 8;
        a.1 += 2 * cin * cout * 8 * vox(lvl + 1);
        add(&mut a, res_block(2 * cout, cout, vox(lvl)));
    }
    add(&mut a, conv(c, cfg.num_classes as u64, 1, true, vox(0)));
    a
}

fn res_fusion(cfg: &ModelConfig, l: usize) -> (u64, u64) {
    let d = cfg.channels(l) as u64;
    let vox = ((cfg.patch as u64) >> (l + 1)).pow(3);
    let mut a = conv(2 * d, d, 1, false, vox);
    add(&mut a, conv(d, d, 3, false, vox));
    a.0 += 4 * d;
    a
}

pub fn model_info(cfg: &ModelConfig) -> ModelInfo {
    let mut parts = Vec::new();
    let mut push = |name: &str, (params, flops): (u64, u64)| {
        parts.push(Part {
            name: name.to_string(),
            params,
            flops,
        })
    };
    let enc = swin_encoder(cfg);
    match cfg.encoder_weights {
        // shared weights, run once per branch
        EncoderWeights::Shared => push("swin encoder (shared)", (enc.0, 2 * enc.1)),
        EncoderWeights::Separate => {
            push("swin encoder CT", enc);
            push("swin encoder MRI", enc);
        }
    }
    if !cfg.no_rl_xalign {
        let mut x = (0, 0);
        let mut f = (0, 0);
        for l in 0..4 {
            x.0 += 24; // θ
            if !cfg.no_cma {
                add(&mut x, cma(cfg, l));
                if cfg.cma_bidirectional {
                    add(&mut x, cma(cfg, l));
                }
            }
            let rf = res_fusion(cfg, l);
            add(&mut f, rf);
            add(&mut f, rf);
        }
        push("RL-XAlign (CMA + PoseAlign θ), 4 levels", x);
        push("Res-Fusion, 4 levels × 2 branches", f);
    }
    let dec = decoder(cfg);
    push("decoder CT", dec);
    push("decoder MRI", dec);
    ModelInfo { parts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Preset, RlU2Net};
    use burn::module::Module;
    use burn::tensor::Device;

    #[test]
    fn analytic_parameter_count_matches_the_built_network() {
        let dev = Device::flex();
        let mut cfgs = vec![
            ModelConfig::preset(Preset::Tiny),
            ModelConfig::preset(Preset::Cpu),
        ];
        let mut sep = ModelConfig::preset(Preset::Tiny);
        sep.encoder_weights = EncoderWeights::Separate;
        cfgs.push(sep);
        for flag in 0..3 {
            let mut c = ModelConfig::preset(Preset::Tiny);
            match flag {
                0 => c.no_cma = true,
                1 => c.no_rl_xalign = true,
                _ => c.cma_bidirectional = false,
            }
            cfgs.push(c);
        }
        for cfg in cfgs {
            let net = RlU2Net::new(&cfg, &dev);
            assert_eq!(
                net.num_params() as u64,
                model_info(&cfg).params(),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn a_conv_flop_count_by_hand() {
        // 16→16, k3 on 64³ outputs: 2·16·16·27·64³ = 3 623 878 656
        assert_eq!(conv(16, 16, 3, false, 64 * 64 * 64).1, 3_623_878_656);
        // window attention: one 4³ window of 8 channels: 4·64·8·64 = 131 072
        let (tp, nw) = windows(4, 4);
        assert_eq!(4 * nw * 8 * tp, 131_072);
    }
}
