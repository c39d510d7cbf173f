//! Dense 3×3 convolution over a few input channels (the stem of an image model), NCHW or CHW
//! float32, stride 1 or 2, with the ReLU that follows it fused in.
//!
//! The first layer of ShuffleNet-v2 (3 → 24 channels, stride 2, 224×224 → 112×112) has only
//! 27 products per output value, too few for tract's im2col + matrix-product path: with its
//! padding and separate ReLU it took 1.2 ms, about 8 GFLOP/s. Here the few input planes are
//! each copied once into a bordered buffer ([`PaddedPlane`]); then, for each output row, 16
//! positions at a time, the 27 input values of those positions are loaded once and every
//! output channel's sum is accumulated in one register ([`simd::DenseRow`]).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::plane::{PaddedPlane, Window};
use super::simd;
use crate::model::assist;

/// The largest number of input channels this kernel takes: beyond it tract's matrix product
/// has enough products per output to be efficient.
pub(crate) const MAX_IN_CHANNELS: usize = 4;

/// The operator that replaces tract's `Conv` (and the ReLU after it) for 3×3 windows over
/// at most [`MAX_IN_CHANNELS`] input channels (see [`super`]).
///
/// Inputs: the NCHW (or CHW) image, the kernel (OIHW: `out * in * 9` values) and the bias
/// (`out` values, or one shared value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct StemConv3x3 {
    pub window: Window,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Clamp the output at 0 (the ReLU that followed the convolution in the graph).
    pub relu: bool,
}

impl Op for StemConv3x3 {
    fn name(&self) -> StaticName {
        "StemConv3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?}, {} -> {} channels, relu: {}",
            self.window, self.in_channels, self.out_channels, self.relu
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for StemConv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 3,
            "StemConv3x3 takes image, kernel and bias"
        );
        let shape = self.output_shape(inputs[0].shape())?;
        super::eval_into(&shape, &inputs, |values, out| {
            self.run(values[0], values[1], values[2], out)
        })
    }
}

impl TypedOp for StemConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.output_shape(super::concrete_input("StemConv3x3", inputs, 3)?)?;
        let kernel_values = 9 * self.in_channels * self.out_channels;
        super::check_kernel_and_bias(inputs, kernel_values, self.out_channels)?;
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (oh, ow) = self.window.out_hw;
        let rank = inputs[0].rank();
        let images = inputs[0].shape.iter().take(rank - 3).product::<TDim>();
        let products = 9 * self.in_channels * self.out_channels * oh * ow;
        Ok(tvec!((Cost::FMA(f32::datum_type()), images * products)))
    }

    as_op!();
}

impl StemConv3x3 {
    /// The output shape for an input of `shape` (NCHW or CHW).
    fn output_shape(&self, shape: &[usize]) -> TractResult<Vec<usize>> {
        let mut out = self.window.output_shape(shape)?;
        let c = out.len() - 3;
        ensure!(
            out[c] == self.in_channels,
            "input {shape:?} has not {} channels",
            self.in_channels
        );
        out[c] = self.out_channels;
        Ok(out)
    }

    /// Convolve every image of `image` into `out`.
    fn run(&self, image: &[f32], kernel: &[f32], bias: &[f32], out: &mut [f32]) -> TractResult<()> {
        let (h, w) = self.window.in_hw;
        let (oh, ow) = self.window.out_hw;
        let (cin, cout) = (self.in_channels, self.out_channels);
        let count = 9 * cin;
        ensure!(count <= simd::MAX_TAPS && kernel.len() == count * cout);
        ensure!(
            image.len() / (cin * h * w) == out.len() / (cout * oh * ow),
            "image and output differ"
        );
        let bias = super::per_channel_bias(bias, cout)?;
        let mut planes: Vec<PaddedPlane> =
            (0..cin).map(|_| PaddedPlane::new(self.window)).collect();
        let pitch = self.window.pitch();
        let images = image
            .chunks_exact(cin * h * w)
            .zip(out.chunks_exact_mut(cout * oh * ow));
        for (image, out) in images {
            for (padded, plane) in planes.iter_mut().zip(image.chunks_exact(h * w)) {
                padded.load(plane, 0.0);
            }
            let planes = &planes;
            // Blocks of output channels, shared with helping threads.
            assist::for_each_run(out, oh * ow, 4, |first, out| {
                let channels = out.len() / (oh * ow);
                let kernel = &kernel[first * count..(first + channels) * count];
                let bias = &bias[first..first + channels];
                for y in 0..oh {
                    // Tap (ci, ky, kx) of every position of output row y, in the kernel's order.
                    let mut taps: [&[f32]; simd::MAX_TAPS] = [&[]; simd::MAX_TAPS];
                    for (t, tap) in taps[..count].iter_mut().enumerate() {
                        *tap = &planes[t / 9].tap(t % 9)[y * pitch..y * pitch + ow];
                    }
                    let row = simd::DenseRow {
                        taps: &taps[..count],
                        weights: kernel,
                        bias,
                        relu: self.relu,
                        plane: oh * ow,
                    };
                    row.run(out, y * ow);
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let mut rng = fastrand::Rng::with_seed(11);
        for (in_hw, stride, cin, cout, relu) in [
            ((40, 38), 2, 3, 5, false),
            ((9, 8), 1, 2, 3, true),
            ((224, 224), 2, 3, 4, true),
        ] {
            let (h, w) = in_hw;
            let out_hw = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let op = StemConv3x3 {
                window: Window {
                    in_hw,
                    out_hw,
                    stride,
                },
                in_channels: cin,
                out_channels: cout,
                relu,
            };
            let n = 2;
            let image: Vec<f32> = (0..n * cin * h * w).map(|_| rng.f32() - 0.5).collect();
            let kernel: Vec<f32> = (0..9 * cin * cout).map(|_| rng.f32() - 0.5).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.f32() - 0.5).collect();
            let mut out = vec![f32::NAN; n * cout * out_hw.0 * out_hw.1];
            op.run(&image, &kernel, &bias, &mut out).unwrap();
            let mut i = 0;
            for b in 0..n {
                for co in 0..cout {
                    for y in 0..out_hw.0 {
                        for x in 0..out_hw.1 {
                            let mut acc = bias[co];
                            for ci in 0..cin {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let iy = (stride * y + ky) as isize - 1;
                                        let ix = (stride * x + kx) as isize - 1;
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < h
                                            && (ix as usize) < w
                                        {
                                            let v = image[((b * cin + ci) * h + iy as usize) * w
                                                + ix as usize];
                                            acc += kernel[((co * cin + ci) * 3 + ky) * 3 + kx] * v;
                                        }
                                    }
                                }
                            }
                            if relu {
                                acc = acc.max(0.0);
                            }
                            assert!(
                                (out[i] - acc).abs() <= 1e-5,
                                "{in_hw:?} ({b},{co},{y},{x}): {} vs {acc}",
                                out[i]
                            );
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}
