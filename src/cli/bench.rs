//! `rlu2net bench kernels`: median timings of the network's building blocks.

use std::time::Instant;

use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3dConfig;
use burn::tensor::{Device, Distribution, Tensor};

use crate::device::{Backend, select};
use crate::model::Preset;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to time.
    #[arg(value_enum, default_value_t = BenchWhat::Kernels)]
    pub what: BenchWhat,
    /// Timed runs per kernel (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Where to compute (`--device` as in nnU-Net and TotalSegmentator; `--backend` also works).
    #[arg(long, visible_alias = "device", default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Preset for `bench model`.
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    pub preset: Preset,
    /// Patch size for `bench model` instead of the preset's (a multiple of 32); `--preset
    /// cpu --patch 64` is the network the PyTorch reference calls `cpu`.
    #[arg(long)]
    pub patch: Option<usize>,
    /// The CPU kernel of 3×3×3 convolutions: `direct` (AVX-512, where the CPU has it and
    /// rows are 16·k voxels wide) or `im2col` (im2col + GEMM always), for comparing the two.
    #[arg(long, value_enum, default_value_t = ConvKernel::Direct)]
    pub conv: ConvKernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvKernel {
    Direct,
    Im2col,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BenchWhat {
    /// Conv3d 16→16 k3 on [1,16,64³] (forward; forward+backward) and one windowed attention step.
    Kernels,
    /// One RL-U²Net forward pass (inference) and forward+backward (training) of a CT+MRI pair.
    Model,
    /// Sliding-window inference of a 160×160×128 CT+MRI pair on the working grid (overlap
    /// 0.5, Gaussian weights, argmax), as the PyTorch reference's `--phase sw`.
    Sw,
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> (f64, Vec<f64>) {
    f(); // warm-up
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let all = t.clone();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], all)
}

fn sync(d: &Device) {
    d.sync().expect("device sync");
}

/// One windowed multi-head self-attention step with a relative-position bias:
/// x [nW, N, C] → qkv → softmax(QKᵀ/√d + bias)·V → projection (the attention as the
/// model runs it: one operation on the CPU backend).
fn window_attention(
    x: Tensor<3>,
    w_qkv: &Tensor<2>,
    w_proj: &Tensor<2>,
    bias: &Tensor<3>,
    heads: usize,
) -> Tensor<3> {
    let [_, _, c] = x.dims();
    let d = c / heads;
    let qkv = x.matmul(w_qkv.clone().unsqueeze::<3>()); // [nW, N, 3C]
    let (q, k, v) = (
        qkv.clone().narrow(2, 0, c),
        qkv.clone().narrow(2, c, c),
        qkv.narrow(2, 2 * c, c),
    );
    let scale = 1.0 / (d as f64).sqrt();
    crate::model::window_attention::window_attention(
        q,
        k,
        v,
        heads,
        scale,
        Some(bias.clone()),
        None,
    )
    .matmul(w_proj.clone().unsqueeze::<3>())
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    crate::model::conv3d::set_direct_kernel(a.conv == ConvKernel::Direct);
    match a.what {
        BenchWhat::Kernels => kernels(a),
        BenchWhat::Model => model(a),
        BenchWhat::Sw => sliding_window(a),
    }
}

/// The model configuration `bench model` and `bench sw` time: the preset, `--patch` applied.
fn bench_config(a: &BenchArgs) -> anyhow::Result<crate::config::TrainConfig> {
    let mut cfg = crate::config::TrainConfig::preset(a.preset);
    if let Some(p) = a.patch {
        cfg.model.patch = p;
        cfg.model.validate()?;
    }
    Ok(cfg)
}

fn sliding_window(a: BenchArgs) -> anyhow::Result<()> {
    use crate::infer::{Predictor, argmax_labels};
    use crate::model::RlU2Net;
    use rand::SeedableRng;
    use rand_distr::{Distribution as _, Normal};
    let cfg = bench_config(&a)?;
    let sel = select(a.backend)?;
    let dev = sel.device.clone();
    let shape = (160, 160, 128);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let normal = Normal::new(0.0f32, 1.0).expect("valid");
    let mut vol = || ndarray::Array3::from_shape_simple_fn(shape, || normal.sample(&mut rng));
    let (ct, mr) = (vol(), vol());
    let net = RlU2Net::new(&cfg.model, &dev);
    let stats = crate::preprocess::CtStats {
        clip_low: -1000.0,
        clip_high: 1000.0,
        mean: 0.0,
        std: 1.0,
    };
    let p = Predictor::from_parts(cfg.clone(), stats, net, dev.clone(), 0.5, false);
    println!(
        "backend: {}; threads: {}; preset {:?}, {}³ windows, a {shape:?} pair, overlap 0.5",
        sel.description,
        rayon::current_num_threads(),
        a.preset,
        cfg.model.patch
    );
    let hidden = crate::progress::Progress::hidden();
    let (m, all) = median_ms(a.runs, || {
        let (pc, pm) = p
            .probabilities_pair(&ct, &mr, &hidden)
            .expect("a progress nothing stops");
        let _ = (argmax_labels(&pc), argmax_labels(&pm));
        sync(&dev);
    });
    println!("sliding window (pair, both branches): median {m:.0} ms, runs {all:.0?}");
    Ok(())
}

fn model(a: BenchArgs) -> anyhow::Result<()> {
    use crate::model::{ActionMode, RlU2Net};
    use rand::SeedableRng;
    let cfg = bench_config(&a)?.model;
    let p = cfg.patch;
    let sel = select(a.backend)?;
    let dev = sel.device.clone();
    println!(
        "backend: {}; threads: {}; preset {:?} ({p}³ pair, batch 1)",
        sel.description,
        rayon::current_num_threads(),
        a.preset
    );
    let net = RlU2Net::new(&cfg, &dev);
    let ct = Tensor::<5>::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), &dev);
    let mr = Tensor::<5>::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), &dev);
    let (m, all) = median_ms(a.runs, || {
        let out =
            net.forward::<rand_chacha::ChaCha8Rng>(ct.clone(), mr.clone(), &mut ActionMode::TopK);
        let _ = out.logits_ct.sum().into_scalar::<f32>();
        sync(&dev);
    });
    println!("forward (inference, top-k rotations): median {m:.0} ms, runs {all:.0?}");
    let ad = dev.clone().autodiff();
    let net = RlU2Net::new(&cfg, &ad);
    let ct = Tensor::<5>::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), &ad);
    let mr = Tensor::<5>::random([1, 1, p, p, p], Distribution::Normal(0.0, 1.0), &ad);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (m, all) = median_ms(a.runs, || {
        let out = net.forward(ct.clone(), mr.clone(), &mut ActionMode::Sample(&mut rng));
        let g = (out.logits_ct.sum() + out.logits_mr.sum()).backward();
        let gw = net.decoder_ct.head.weight.val().grad(&g).expect("gradient");
        let _ = gw.sum().into_scalar::<f32>();
        sync(&ad);
    });
    println!("forward + backward (training, sampled rotations): median {m:.0} ms, runs {all:.0?}");
    // the reference's `train` phase: forward, backward and one AdamW step
    let mut net = Some(net);
    let mut optim = burn::optim::AdamWConfig::new().init();
    let (m, all) = median_ms(a.runs, || {
        let model = net.take().expect("model");
        let out = model.forward(ct.clone(), mr.clone(), &mut ActionMode::Sample(&mut rng));
        let loss = out.logits_ct.sum() + out.logits_mr.sum();
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        let _ = model
            .decoder_ct
            .head
            .weight
            .val()
            .sum()
            .into_scalar::<f32>();
        sync(&ad);
        net = Some(model);
    });
    println!("training step (forward + backward + AdamW): median {m:.0} ms, runs {all:.0?}");
    Ok(())
}

fn kernels(a: BenchArgs) -> anyhow::Result<()> {
    let sel = select(a.backend)?;
    let dev = sel.device.clone();
    println!(
        "backend: {}; threads: {}",
        sel.description,
        rayon::current_num_threads()
    );
    println!("{:<62} {:>10}  runs (ms)", "kernel", "median ms");
    let report = |name: &str, (m, all): (f64, Vec<f64>)| {
        let runs: Vec<String> = all.iter().map(|x| format!("{x:.0}")).collect();
        println!("{name:<62} {m:>10.1}  {}", runs.join(" "));
    };

    conv_kernels(a.runs, &dev, &report);
    norm_kernels(a.runs, &dev, &report);
    attention_kernel(a.runs, &dev, &report);
    Ok(())
}

/// Conv3d 16→16, k3, padding 1, on [1, 16, 64³]: forward, forward + backward.
fn conv_kernels(runs: usize, dev: &Device, report: &impl Fn(&str, (f64, Vec<f64>))) {
    let ad = dev.clone().autodiff();
    // Conv3d 16→16, k3, padding 1, on [1, 16, 64, 64, 64]
    let conv = Conv3dConfig::new([16, 16], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .init(dev);
    let x = Tensor::<5>::random([1, 16, 64, 64, 64], Distribution::Normal(0.0, 1.0), dev);
    report(
        "Conv3d 16->16 k3 p1 [1,16,64^3] forward",
        median_ms(runs, || {
            let y = crate::model::conv::forward(&conv, x.clone());
            let _ = y.sum().into_scalar::<f32>();
            sync(dev);
        }),
    );
    let conv_ad = Conv3dConfig::new([16, 16], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .init(&ad);
    let xa = Tensor::<5>::random([1, 16, 64, 64, 64], Distribution::Normal(0.0, 1.0), &ad)
        .require_grad();
    report(
        "Conv3d 16->16 k3 p1 [1,16,64^3] forward+backward",
        median_ms(runs, || {
            let y = crate::model::conv::forward(&conv_ad, xa.clone());
            let g = y.sum().backward();
            let gw = conv_ad.weight.val().grad(&g).expect("weight gradient");
            let _ = gw.sum().into_scalar::<f32>();
            sync(&ad);
        }),
    );
}

/// Instance norm + LeakyReLU on [1, 12, 64³]: forward, forward + backward.
fn norm_kernels(runs: usize, dev: &Device, report: &impl Fn(&str, (f64, Vec<f64>))) {
    let ad = dev.clone().autodiff();
    // instance norm + LeakyReLU on [1, 12, 64, 64, 64] (each ResBlock has two)
    let norm = crate::model::layers::Norm3d::new(12, false, dev);
    let x = Tensor::<5>::random([1, 12, 64, 64, 64], Distribution::Normal(0.0, 1.0), dev);
    report(
        "InstanceNorm + LeakyReLU [1,12,64^3] forward",
        median_ms(runs, || {
            let y = crate::model::layers::lrelu(norm.forward(x.clone()));
            let _ = y.sum().into_scalar::<f32>();
            sync(dev);
        }),
    );
    let norm_ad = crate::model::layers::Norm3d::new(12, false, &ad);
    let xa = Tensor::<5>::random([1, 12, 64, 64, 64], Distribution::Normal(0.0, 1.0), &ad)
        .require_grad();
    report(
        "InstanceNorm + LeakyReLU [1,12,64^3] forward+backward",
        median_ms(runs, || {
            let y = crate::model::layers::lrelu(norm_ad.forward(xa.clone()));
            let g = (y.clone() * y).sum().backward();
            let gx = xa.grad(&g).expect("input gradient");
            let _ = gx.sum().into_scalar::<f32>();
            sync(&ad);
        }),
    );
}

/// One windowed attention step with its gradients.
fn attention_kernel(runs: usize, dev: &Device, report: &impl Fn(&str, (f64, Vec<f64>))) {
    let ad = dev.clone().autodiff();
    // windowed attention: 512 windows x 64 tokens (4^3) x 96 channels, 3 heads
    let (nw, n, c, h) = (512, 64, 96, 3);
    let x = Tensor::<3>::random([nw, n, c], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let w_qkv =
        Tensor::<2>::random([c, 3 * c], Distribution::Normal(0.0, 0.05), &ad).require_grad();
    let w_proj = Tensor::<2>::random([c, c], Distribution::Normal(0.0, 0.05), &ad).require_grad();
    let bias = Tensor::<3>::random([h, n, n], Distribution::Normal(0.0, 0.02), &ad).require_grad();
    report(
        "window attention 512x64 tokens x96 ch, 3 heads, rel. bias, fwd+bwd",
        median_ms(runs, || {
            let y = window_attention(x.clone(), &w_qkv, &w_proj, &bias, h);
            let g = y.sum().backward();
            let gq = w_qkv.grad(&g).expect("qkv gradient");
            let _ = gq.sum().into_scalar::<f32>();
            sync(&ad);
        }),
    );
}
