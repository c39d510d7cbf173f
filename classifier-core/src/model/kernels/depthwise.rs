//! Depthwise 3×3 convolution (one filter per channel), NCHW or CHW float32, stride 1 or 2.
//!
//! ShuffleNet-v2 has 19 of these; tract runs them through a generic patch walker that spent
//! 1.8-2.2 ms of an 8-9 ms inference on them. Here each plane is copied once into a bordered
//! buffer ([`PaddedPlane`]) and the whole plane is three passes of three multiply-adds over
//! contiguous slices, which the compiler vectorizes (AVX2 when the CPU has it).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::plane::{PaddedPlane, Window};
use super::simd;
use crate::model::assist;

/// The operator that replaces tract's `Conv` for depthwise 3×3 windows (see [`super`]).
///
/// Inputs: the NCHW (or CHW) image, the kernel (`C * 9` values, channel-major then row-major, i.e.
/// OIHW with I = 1) and the bias (`C` values, or one shared value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Depthwise3x3 {
    pub window: Window,
}

impl Op for Depthwise3x3 {
    fn name(&self) -> StaticName {
        "Depthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.window)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 3,
            "Depthwise3x3 takes image, kernel and bias"
        );
        let shape = self.window.output_shape(inputs[0].shape())?;
        let c = shape[shape.len() - 3];
        super::eval_into(&shape, &inputs, |values, out| {
            run(self.window, c, values[0], values[1], values[2], out)
        })
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = super::concrete_input("Depthwise3x3", inputs, 3)?;
        let shape = self.window.output_shape(shape)?;
        let c = shape[shape.len() - 3];
        super::check_kernel_and_bias(inputs, 9 * c, c)?;
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (oh, ow) = self.window.out_hw;
        let rank = inputs[0].rank();
        let planes = inputs[0].shape.iter().take(rank - 2).product::<TDim>();
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            planes * (9 * oh * ow)
        )))
    }

    as_op!();
}

/// Convolve every plane of `image` (NCHW, `c` channels) into `out`.
fn run(
    window: Window,
    c: usize,
    image: &[f32],
    kernel: &[f32],
    bias: &[f32],
    out: &mut [f32],
) -> TractResult<()> {
    let (h, w) = window.in_hw;
    let (oh, ow) = window.out_hw;
    ensure!(kernel.len() == 9 * c && (bias.len() == c || bias.len() == 1));
    ensure!(
        image.len() / (h * w) == out.len() / (oh * ow),
        "image and output planes differ"
    );
    // Runs of whole planes, shared with helping threads; each run has its own buffers.
    assist::for_each_run(out, oh * ow, 1, |first, out| {
        let mut padded = PaddedPlane::new(window);
        let mut computed = vec![0.0; window.span()];
        let image = &image[first * h * w..];
        let planes = image.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow));
        for (offset, (plane, out_plane)) in planes.enumerate() {
            let channel = (first + offset) % c;
            let weights = &kernel[9 * channel..9 * channel + 9];
            padded.load(plane, 0.0);
            computed.fill(if bias.len() == 1 {
                bias[0]
            } else {
                bias[channel]
            });
            for ky in 0..3 {
                let t = 3 * ky;
                simd::multiply_add_3(
                    &mut computed,
                    [padded.tap(t), padded.tap(t + 1), padded.tap(t + 2)],
                    [weights[t], weights[t + 1], weights[t + 2]],
                );
            }
            padded.store(&computed, out_plane);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output pixel at a time, zero padding of one before each axis.
    fn reference(
        window: Window,
        c: usize,
        image: &[f32],
        kernel: &[f32],
        bias: &[f32],
    ) -> Vec<f32> {
        let (h, w) = window.in_hw;
        let (oh, ow) = window.out_hw;
        let planes = image.len() / (h * w);
        let mut out = Vec::with_capacity(planes * oh * ow);
        for p in 0..planes {
            let ch = p % c;
            for y in 0..oh {
                for x in 0..ow {
                    let mut acc = bias[ch];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (window.stride * y + ky) as isize - 1;
                            let ix = (window.stride * x + kx) as isize - 1;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let v = image[p * h * w + iy as usize * w + ix as usize];
                                acc += kernel[ch * 9 + ky * 3 + kx] * v;
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_odd_and_even_sizes() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (in_hw, stride) in [
            ((7, 7), 1),
            ((6, 9), 1),
            ((56, 56), 2),
            ((7, 5), 2),
            ((1, 2), 2),
            ((28, 28), 1),
        ] {
            let out_hw = ((in_hw.0 - 1) / stride + 1, (in_hw.1 - 1) / stride + 1);
            let window = Window {
                in_hw,
                out_hw,
                stride,
            };
            let (n, c) = (2, 3);
            let image: Vec<f32> = (0..n * c * in_hw.0 * in_hw.1)
                .map(|_| rng.f32() - 0.5)
                .collect();
            let kernel: Vec<f32> = (0..9 * c).map(|_| rng.f32() - 0.5).collect();
            let bias: Vec<f32> = (0..c).map(|_| rng.f32()).collect();
            let mut out = vec![f32::NAN; n * c * out_hw.0 * out_hw.1];
            run(window, c, &image, &kernel, &bias, &mut out).unwrap();
            let expected = reference(window, c, &image, &kernel, &bias);
            for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{in_hw:?} s{stride} at {i}: {a} vs {b}"
                );
            }
        }
    }
}
