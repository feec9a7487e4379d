//! rlu2net's 3D convolution on the CPU backend (`model::conv3d`: the direct AVX-512
//! kernel, im2col + GEMM, and Burn's own for strided convolutions) against a direct
//! reference computed here by plain loops: the forward pass and the gradients of the
//! input, the weight and the bias, plus a finite difference. Each case also checks
//! which kernel ran.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rlu2net::model::conv3d::{Kernel, conv3d, kernel_for, set_direct_kernel};

struct Case {
    x: [usize; 5],
    w: [usize; 5],
    stride: usize,
    pad: usize,
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn out_size(i: usize, k: usize, s: usize, p: usize) -> usize {
    (i + 2 * p - k) / s + 1
}

/// Direct loops: (conv3d(x, w), ∂L/∂x, ∂L/∂w) of L = Σ conv3d(x, w) · r.
fn reference(c: &Case, x: &[f32], w: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [n, ci, d, h, wd] = c.x;
    let [co, _, kd, kh, kw] = c.w;
    let (od, oh, ow) = (
        out_size(d, kd, c.stride, c.pad),
        out_size(h, kh, c.stride, c.pad),
        out_size(wd, kw, c.stride, c.pad),
    );
    let xi = |b: usize, ch: usize, z: usize, y: usize, q: usize| {
        (((b * ci + ch) * d + z) * h + y) * wd + q
    };
    let wi = |o: usize, ch: usize, a: usize, bb: usize, cc: usize| {
        (((o * ci + ch) * kd + a) * kh + bb) * kw + cc
    };
    let ri = |b: usize, o: usize, z: usize, y: usize, q: usize| {
        (((b * co + o) * od + z) * oh + y) * ow + q
    };
    let mut y = vec![0.0f64; r.len()];
    let mut gx = vec![0.0f64; x.len()];
    let mut gw = vec![0.0f64; w.len()];
    for b in 0..n {
        for o in 0..co {
            for z in 0..od {
                for y_ in 0..oh {
                    for q in 0..ow {
                        let g = r[ri(b, o, z, y_, q)] as f64;
                        for ch in 0..ci {
                            for a in 0..kd {
                                for bb in 0..kh {
                                    for cc in 0..kw {
                                        let iz = (z * c.stride + a) as isize - c.pad as isize;
                                        let iy = (y_ * c.stride + bb) as isize - c.pad as isize;
                                        let iq = (q * c.stride + cc) as isize - c.pad as isize;
                                        if iz < 0
                                            || iy < 0
                                            || iq < 0
                                            || iz as usize >= d
                                            || iy as usize >= h
                                            || iq as usize >= wd
                                        {
                                            continue;
                                        }
                                        let xk = xi(b, ch, iz as usize, iy as usize, iq as usize);
                                        let wk = wi(o, ch, a, bb, cc);
                                        y[ri(b, o, z, y_, q)] += x[xk] as f64 * w[wk] as f64;
                                        gx[xk] += g * w[wk] as f64;
                                        gw[wk] += g * x[xk] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f(y), f(gx), f(gw))
}

/// Checks the case, which must run on the kernel `want`.
fn check(c: &Case, want: Kernel) {
    let dev = Device::flex().autodiff();
    let x = Tensor::<5>::random(c.x, Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let w = Tensor::<5>::random(c.w, Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let b = Tensor::<1>::random([c.w[0]], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let opts = ConvOptions::new([c.stride; 3], [c.pad; 3], [1; 3], 1);
    let ran = kernel_for(c.x, c.w, &opts);
    assert_eq!(ran, want, "kernel for {:?} * {:?}", c.x, c.w);
    let y = conv3d(x.clone(), w.clone(), Some(b.clone()), opts.clone());
    let r = Tensor::<5>::random(y.dims(), Distribution::Normal(0.0, 1.0), &dev);
    let yv = vals(y.clone());
    let grads = (y * r.clone()).sum().backward();
    let (gx, gw) = (vals(x.grad(&grads).unwrap()), vals(w.grad(&grads).unwrap()));
    let gb = vals(b.grad(&grads).unwrap());
    let (mut ry, rx, rw) = reference(c, &vals(x.clone()), &vals(w.clone()), &vals(r.clone()));
    // the bias: added to every output voxel of its channel; its gradient is Σ r there
    let (bv, rv) = (vals(b.clone()), vals(r.clone()));
    let plane = ry.len() / (c.x[0] * c.w[0]);
    let mut rb = vec![0.0f32; c.w[0]];
    for (i, (yp, rp)) in ry.chunks_mut(plane).zip(rv.chunks(plane)).enumerate() {
        yp.iter_mut().for_each(|v| *v += bv[i % c.w[0]]);
        rb[i % c.w[0]] += rp.iter().sum::<f32>();
    }
    for (name, got, want) in [
        ("y (forward)", &yv, &ry),
        ("x", &gx, &rx),
        ("weight", &gw, &rw),
        ("bias", &gb, &rb),
    ] {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "stride {} pad {} kernel {:?}: {name}[{i}] = {a}, reference {b}",
                c.stride,
                c.pad,
                &c.w[2..]
            );
        }
    }
    // one finite difference on the weight, in f64 through the forward pass
    let wv = vals(w.clone());
    let eps = 1e-2f32;
    let f = |v: Vec<f32>| -> f64 {
        let wt = Tensor::<5>::from_data(TensorData::new(v, c.w), &dev);
        let y = conv3d(x.clone().detach(), wt, None, opts.clone());
        (y * r.clone()).sum().into_scalar::<f32>() as f64
    };
    let k = wv.len() / 2;
    let (mut plus, mut minus) = (wv.clone(), wv.clone());
    plus[k] += eps;
    minus[k] -= eps;
    let fd = (f(plus) - f(minus)) / (2.0 * eps as f64);
    assert!(
        (fd - gw[k] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
        "finite difference {fd} vs {}",
        gw[k]
    );
}

#[test]
fn stride_one_gradients_match_the_direct_reference() {
    // (input, weight, padding); none of them has rows of 16·k voxels, so all go through
    // im2col + GEMM
    for (x, w, pad) in [
        ([2, 3, 5, 6, 4], [4, 3, 3, 3, 3], 1),
        ([1, 2, 6, 5, 7], [3, 2, 3, 3, 3], 0),
        ([2, 5, 4, 4, 4], [6, 5, 1, 1, 1], 0),
        // a kernel of three different sides
        ([1, 3, 4, 5, 6], [2, 3, 3, 2, 3], 1),
        // padding k − 1 (the input gradient then runs with none)
        ([1, 2, 4, 4, 5], [3, 2, 3, 3, 3], 2),
        // several column tiles per item (about 4 800 positions each for K = 54), two
        // items: tiles run in parallel and their weight-gradient parts are summed
        ([2, 2, 26, 25, 24], [2, 2, 3, 3, 3], 1),
    ] {
        check(
            &Case {
                x,
                w,
                stride: 1,
                pad,
            },
            Kernel::Gemm,
        );
    }
}

/// Shapes of the direct 3×3×3 kernel (padding 1, rows a multiple of 16 voxels wide, on
/// CPUs with AVX-512): rows of one and of three 16-voxel vectors, output channels in a
/// full block of 8 and a partial one, two items; each also through im2col + GEMM (the
/// kernel switched off). The only test here that switches it.
#[test]
fn direct_kernel_gradients_match_the_direct_reference() {
    let avx512 = is_x86_feature_detected!("avx512f");
    if !avx512 {
        eprintln!("this CPU has no AVX-512F: the direct kernel is not tested, only im2col");
    }
    for (x, w) in [
        ([2, 3, 5, 4, 48], [10, 3, 3, 3, 3]),
        ([1, 9, 3, 6, 16], [8, 9, 3, 3, 3]),
        ([1, 1, 4, 3, 32], [3, 1, 3, 3, 3]),
        // the first convolution of the network's full-resolution block (32³ patches)
        ([1, 1, 32, 32, 32], [4, 1, 3, 3, 3]),
        ([1, 4, 16, 16, 32], [4, 4, 3, 3, 3]),
    ] {
        let case = Case {
            x,
            w,
            stride: 1,
            pad: 1,
        };
        for direct in [true, false] {
            set_direct_kernel(direct);
            let want = if direct && avx512 {
                Kernel::Direct
            } else {
                Kernel::Gemm
            };
            check(&case, want);
        }
    }
    set_direct_kernel(true);
}

#[test]
fn strided_gradients_match_the_direct_reference() {
    check(
        &Case {
            x: [1, 3, 6, 6, 6],
            w: [4, 3, 2, 2, 2],
            stride: 2,
            pad: 0,
        },
        Kernel::Burn,
    );
}
