//! The assembly: two branches (CT primary, MRI auxiliary), the shared (or separate)
//! Swin encoder with an RL-XAlign module before each stage, Res-Fusion of the skips,
//! and one ResU-Net decoder per branch.

use burn::prelude::*;
use rand::Rng;

use super::config::{EncoderWeights, ModelConfig};
use super::decoder::{Decoder, ResFusion};
use super::layers::plain_layer_norm;
use super::layers::{channels_first, channels_last};
use super::pose_align::{ActionMode, mean_rotated, rotation_weights, rotations_of};
use super::swin::SwinEncoder;
use super::xalign::{AlignOutput, RlXAlign};

#[derive(Module, Debug)]
pub struct RlU2Net {
    pub encoder: SwinEncoder,
    /// The MRI branch's own encoder when `encoder_weights = separate`.
    pub encoder_mr: Option<SwinEncoder>,
    /// Four modules (1/2, 1/4, 1/8, 1/16); empty in the `no_rl_xalign` ablation.
    pub align: Vec<RlXAlign>,
    pub fusion_ct: Vec<ResFusion>,
    pub fusion_mr: Vec<ResFusion>,
    pub decoder_ct: Decoder,
    pub decoder_mr: Decoder,
    pub k_sel: usize,
}

/// Everything a forward pass produced.
#[derive(Debug)]
pub struct RlU2NetOutput {
    /// [B, classes, D, H, W]
    pub logits_ct: Tensor<5>,
    pub logits_mr: Tensor<5>,
    /// One entry per RL-XAlign module.
    pub align: Vec<AlignOutput>,
}

/// MONAI SwinUNETR normalises each hidden state over channels before decoding.
fn norm_hidden(x: Tensor<5>) -> Tensor<5> {
    channels_first(plain_layer_norm(channels_last(x)))
}

impl RlU2Net {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        cfg.validate().expect("valid model configuration");
        let aligned = !cfg.no_rl_xalign;
        RlU2Net {
            encoder: SwinEncoder::new(cfg, device),
            encoder_mr: (cfg.encoder_weights == EncoderWeights::Separate)
                .then(|| SwinEncoder::new(cfg, device)),
            align: if aligned {
                (0..4).map(|l| RlXAlign::new(cfg, l, device)).collect()
            } else {
                vec![]
            },
            fusion_ct: if aligned {
                (0..4)
                    .map(|l| ResFusion::new(cfg.channels(l), device))
                    .collect()
            } else {
                vec![]
            },
            fusion_mr: if aligned {
                (0..4)
                    .map(|l| ResFusion::new(cfg.channels(l), device))
                    .collect()
            } else {
                vec![]
            },
            decoder_ct: Decoder::new(cfg, device),
            decoder_mr: Decoder::new(cfg, device),
            k_sel: cfg.k_sel,
        }
    }

    fn encoder_mr(&self) -> &SwinEncoder {
        self.encoder_mr.as_ref().unwrap_or(&self.encoder)
    }

    /// ct, mr: [B, 1, P, P, P] cubic patches (the same size).
    pub fn forward<R: Rng>(
        &self,
        ct: Tensor<5>,
        mr: Tensor<5>,
        mode: &mut ActionMode<'_, R>,
    ) -> RlU2NetOutput {
        let dims = ct.dims();
        assert_eq!(
            dims,
            mr.dims(),
            "the CT and MRI patches must have the same shape"
        );
        assert!(
            self.align.is_empty() || (dims[2] == dims[3] && dims[3] == dims[4]),
            "RL-XAlign rotates feature maps: patches must be cubic, got {:?}",
            &dims[2..]
        );
        let enc0_ct = self.decoder_ct.enc0.forward(ct.clone());
        let enc0_mr = self.decoder_mr.enc0.forward(mr.clone());
        let mut x_ct = self.encoder.embed(ct);
        let mut x_mr = self.encoder_mr().embed(mr);
        let mut hidden_ct = Vec::with_capacity(4);
        let mut hidden_mr = Vec::with_capacity(4);
        let mut records = Vec::with_capacity(self.align.len());
        let mut level_rotations = Vec::with_capacity(self.align.len());
        for l in 0..4 {
            if let Some(module) = self.align.get(l) {
                let (actions, log_probs) = module.pose.choose(self.k_sel, mode, l);
                let (rots, inv) = rotations_of(&actions);
                let w = rotation_weights(&log_probs, module.by_policy);
                let (a, b, rec) = module.forward(x_ct, x_mr, &rots, &inv, actions, log_probs);
                x_ct = a;
                x_mr = b;
                records.push(rec);
                level_rotations.push((rots, inv, w));
            }
            hidden_ct.push(x_ct.clone());
            hidden_mr.push(x_mr.clone());
            x_ct = self.encoder.stages[l].forward(x_ct);
            x_mr = self.encoder_mr().stages[l].forward(x_mr);
        }
        let skips_ct: Vec<Tensor<5>> = hidden_ct
            .into_iter()
            .enumerate()
            .map(|(l, h)| self.decoder_ct.skips[l].forward(norm_hidden(h)))
            .collect();
        let skips_mr: Vec<Tensor<5>> = hidden_mr
            .into_iter()
            .enumerate()
            .map(|(l, h)| self.decoder_mr.skips[l].forward(norm_hidden(h)))
            .collect();
        let (skips_ct, skips_mr) = if self.align.is_empty() {
            (skips_ct, skips_mr)
        } else {
            let mut f_ct = Vec::with_capacity(4);
            let mut f_mr = Vec::with_capacity(4);
            for l in 0..4 {
                let (rots, inv, w) = &level_rotations[l];
                // the other branch's skip turned into this branch's pose by that level's rotations
                let mr_in_ct_pose = mean_rotated(skips_mr[l].clone(), rots, w);
                let ct_in_mr_pose = mean_rotated(skips_ct[l].clone(), inv, w);
                f_ct.push(self.fusion_ct[l].forward(skips_ct[l].clone(), mr_in_ct_pose));
                f_mr.push(self.fusion_mr[l].forward(skips_mr[l].clone(), ct_in_mr_pose));
            }
            (f_ct, f_mr)
        };
        let logits_ct = self
            .decoder_ct
            .forward(enc0_ct, skips_ct, norm_hidden(x_ct));
        let logits_mr = self
            .decoder_mr
            .forward(enc0_mr, skips_mr, norm_hidden(x_mr));
        RlU2NetOutput {
            logits_ct,
            logits_mr,
            align: records,
        }
    }

    /// The plain encoder's features at the input of each RL-XAlign module (patch
    /// embedding, then after stages 1–3), without any cross-modal fusion; `mr`
    /// picks the MRI branch's encoder. For measuring alignment (the PPO reward).
    pub fn level_features(&self, x: Tensor<5>, mr: bool) -> Vec<Tensor<5>> {
        let enc = if mr { self.encoder_mr() } else { &self.encoder };
        let mut x = enc.embed(x);
        let mut out = Vec::with_capacity(4);
        for l in 0..4 {
            out.push(x.clone());
            if l < 3 {
                x = enc.stages[l].forward(x);
            }
        }
        out
    }

    /// θ of each RL-XAlign module.
    pub fn thetas(&self) -> Vec<Vec<f32>> {
        self.align.iter().map(|m| m.pose.theta_values()).collect()
    }

    /// Write θ back after a PPO update.
    pub fn with_thetas(mut self, thetas: &[Vec<f32>]) -> Self {
        let modules = std::mem::take(&mut self.align);
        self.align = modules
            .into_iter()
            .zip(thetas)
            .map(|(mut m, t)| {
                m.pose = m.pose.set_theta(t);
                m
            })
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{cube_rotations, rotation_inverse_table};
    use crate::model::config::{PoseAlignTarget, Preset};
    use crate::model::layers::{conv3, rotate_spatial};
    use crate::model::test_util::vals;
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::{Distribution, Gradients};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn pair(p: usize, dev: &Device) -> (Tensor<5>, Tensor<5>) {
        (
            Tensor::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), dev),
            Tensor::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), dev),
        )
    }

    #[test]
    fn output_shapes_for_presets_and_ablations() {
        let dev = Device::flex();
        let mut cfgs = vec![
            ModelConfig::preset(Preset::Tiny),
            ModelConfig::preset(Preset::Cpu),
        ];
        for flag in 0..4 {
            let mut c = ModelConfig::preset(Preset::Tiny);
            match flag {
                0 => c.no_cma = true,
                1 => c.no_rl_xalign = true,
                2 => c.pose_align_target = PoseAlignTarget::Cross,
                _ => c.encoder_weights = EncoderWeights::Separate,
            }
            cfgs.push(c);
        }
        for cfg in cfgs {
            let net = RlU2Net::new(&cfg, &dev);
            let (ct, mr) = pair(cfg.patch, &dev);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let out = net.forward(ct, mr, &mut ActionMode::Sample(&mut rng));
            let p = cfg.patch;
            assert_eq!(out.logits_ct.dims(), [1, 8, p, p, p]);
            assert_eq!(out.logits_mr.dims(), [1, 8, p, p, p]);
            let want_modules = if cfg.no_rl_xalign { 0 } else { 4 };
            assert_eq!(out.align.len(), want_modules);
            for (l, a) in out.align.iter().enumerate() {
                let n = p >> (l + 1);
                assert_eq!(a.aligned_ct.dims(), [1, cfg.channels(l), n, n, n]);
                assert_eq!(a.actions.len(), cfg.k_sel);
                assert!(
                    a.log_probs
                        .iter()
                        .all(|lp| (lp - (1.0f32 / 24.0).ln()).abs() < 1e-5)
                );
            }
        }
    }

    #[test]
    #[ignore = "the paper preset (96³, C = 48) needs ~1.4 TFLOPs per forward pass: minutes on a CPU"]
    fn paper_preset_output_shapes() {
        let dev = Device::flex();
        let cfg = ModelConfig::preset(Preset::Paper);
        let net = RlU2Net::new(&cfg, &dev);
        let (ct, mr) = pair(96, &dev);
        let out = net.forward::<ChaCha8Rng>(ct, mr, &mut ActionMode::TopK);
        assert_eq!(out.logits_ct.dims(), [1, 8, 96, 96, 96]);
        assert_eq!(out.logits_mr.dims(), [1, 8, 96, 96, 96]);
        assert_eq!(out.align.len(), 4);
    }

    /// Records, for every float parameter, whether the backward pass gave it a non-zero gradient.
    struct GradCheck<'a> {
        grads: &'a Gradients,
        missing: Vec<Vec<usize>>,
        reached: usize,
    }
    impl ModuleVisitor for GradCheck<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            match t.grad(self.grads) {
                Some(g) if g.clone().abs().sum().into_scalar::<f32>() > 0.0 => self.reached += 1,
                _ => self.missing.push(shape),
            }
        }
    }

    #[test]
    fn tiny_backward_reaches_every_parameter_but_theta() {
        let dev = Device::flex().autodiff();
        let cfg = ModelConfig::preset(Preset::Tiny);
        let net = RlU2Net::new(&cfg, &dev);
        let (ct, mr) = pair(32, &dev);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let out = net.forward(ct, mr, &mut ActionMode::Sample(&mut rng));
        let w = Tensor::<5>::random(out.logits_ct.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let mut loss = (out.logits_ct * w.clone()).sum() + (out.logits_mr * w).sum();
        for a in &out.align {
            loss = loss + a.aligned_ct.clone().sum() + a.aligned_mr.clone().unwrap().sum();
        }
        let grads = loss.backward();
        let mut v = GradCheck {
            grads: &grads,
            missing: vec![],
            reached: 0,
        };
        net.visit(&mut v);
        // exactly the four θ (shape [24]) get no gradient
        assert_eq!(v.missing, vec![vec![24]; 4], "parameters without gradient");
        assert!(v.reached > 100);
    }

    #[test]
    fn pose_align_undoes_a_known_rotation_of_the_auxiliary_input() {
        // MRI = CT rotated by R; the agent picks R⁻¹ (k_sel = 1): after a pointwise
        // layer, the rotated auxiliary features equal the primary ones exactly.
        let dev = Device::flex();
        let f = conv3(1, 6, 1, &dev);
        let ct = Tensor::<5>::random([1, 1, 6, 6, 6], Distribution::Normal(0.0, 1.0), &dev);
        let inv = rotation_inverse_table();
        for (ri, r) in cube_rotations().iter().enumerate() {
            let mr = rotate_spatial(ct.clone(), r);
            let (fc, fm) = (f.forward(ct.clone()), f.forward(mr));
            let mut cfg = ModelConfig::preset(Preset::Tiny);
            cfg.k_sel = 1;
            cfg.no_cma = true;
            let module = RlXAlign::new(
                &{
                    cfg.feature_size = 6;
                    cfg
                },
                0,
                &dev,
            );
            let (rots, invs) = rotations_of(&[inv[ri]]);
            let (_, _, rec) = module.forward(
                fc.clone(),
                fm.clone(),
                &rots,
                &invs,
                vec![inv[ri]],
                vec![0.0],
            );
            assert_eq!(
                vals(rec.aligned_ct.clone()),
                vals(rec.primary_ct.clone()),
                "rotation {ri}"
            );
            // the MRI-primary direction uses the inverse: CT rotated by R lands on the MRI
            assert_eq!(
                vals(rec.aligned_mr.unwrap()),
                vals(rec.primary_mr.unwrap()),
                "rotation {ri}"
            );
        }
    }

    #[test]
    fn finite_difference_gradient_of_res_fusion() {
        // inputs from a local seeded generator (the device's is shared with the tests
        // running beside this one); a small step so that no LeakyReLU kink falls inside it
        let dev = Device::flex().autodiff();
        let m = ResFusion::new(3, &dev);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let normal = rand_distr::Normal::new(0.0f32, 1.0).unwrap();
        let mut draw = || {
            let v: Vec<f32> = (0..192).map(|_| rng.sample(normal)).collect();
            Tensor::<5>::from_data(TensorData::new(v, [1, 3, 4, 4, 4]), &dev)
        };
        let own = draw().require_grad();
        let other = draw();
        let w = draw();
        let loss = |x: Tensor<5>| (m.forward(x, other.clone()) * w.clone()).sum();
        let grads = loss(own.clone()).backward();
        let g = vals(own.grad(&grads).unwrap());
        let base = vals(own.clone());
        let eps = 2e-3f32;
        for idx in [0usize, 17, 63, 100, 191] {
            let mut plus = base.clone();
            plus[idx] += eps;
            let mut minus = base.clone();
            minus[idx] -= eps;
            let f = |v: Vec<f32>| {
                let t = Tensor::<5>::from_data(TensorData::new(v, [1, 3, 4, 4, 4]), &dev);
                loss(t).into_scalar::<f32>()
            };
            let fd = (f(plus) - f(minus)) / (2.0 * eps);
            assert!(
                (fd - g[idx]).abs() < 2e-2 * (1.0 + g[idx].abs()),
                "voxel {idx}: autodiff {} vs finite difference {fd}",
                g[idx]
            );
        }
    }

    #[test]
    fn inference_uses_the_most_probable_rotations() {
        let dev = Device::flex();
        let mut cfg = ModelConfig::preset(Preset::Tiny);
        cfg.k_sel = 2;
        let mut theta = vec![0.0f32; 24];
        theta[5] = 3.0;
        theta[11] = 2.0;
        let net = RlU2Net::new(&cfg, &dev).with_thetas(&vec![theta; 4]);
        let (ct, mr) = pair(32, &dev);
        let out = net.forward::<ChaCha8Rng>(ct, mr, &mut ActionMode::TopK);
        for a in &out.align {
            assert_eq!(a.actions, vec![5, 11]);
        }
    }
}
