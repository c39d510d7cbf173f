//! Max-pool over 3×3 windows, NCHW or CHW float32, stride 1 or 2.
//!
//! ShuffleNet-v2 has one (3×3, stride 2, on 24 planes of 112×112) and tract spent 0.5 ms on
//! it, several times what the comparisons need. Same scheme as the depthwise kernel: a
//! bordered copy of each plane (border -inf, so it never wins), then three vectorized
//! passes over the whole plane.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::plane::{PaddedPlane, Window};
use super::simd;
use crate::model::assist;

/// The operator that replaces tract's `MaxPool` for 3×3 windows (see [`super`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MaxPool3x3 {
    pub window: Window,
}

impl Op for MaxPool3x3 {
    fn name(&self) -> StaticName {
        "MaxPool3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.window)])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "MaxPool3x3 takes one input");
        let shape = self.window.output_shape(inputs[0].shape())?;
        super::eval_into(&shape, &inputs, |values, out| {
            run(self.window, values[0], out)
        })
    }
}

impl TypedOp for MaxPool3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = super::concrete_input("MaxPool3x3", inputs, 1)?;
        Ok(tvec!(f32::fact(self.window.output_shape(shape)?)))
    }

    as_op!();
}

/// Pool every plane of `image` into `out`.
fn run(window: Window, image: &[f32], out: &mut [f32]) -> TractResult<()> {
    let (h, w) = window.in_hw;
    let (oh, ow) = window.out_hw;
    ensure!(
        image.len() / (h * w) == out.len() / (oh * ow),
        "image and output planes differ"
    );
    // Runs of whole planes, shared with helping threads; each run has its own buffers.
    assist::for_each_run(out, oh * ow, 1, |first, out| {
        let mut padded = PaddedPlane::new(window);
        let mut computed = vec![0.0; window.span()];
        let image = &image[first * h * w..];
        for (plane, out_plane) in image.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            padded.load(plane, f32::NEG_INFINITY);
            computed.fill(f32::NEG_INFINITY);
            for t in [0, 3, 6] {
                simd::max_3(
                    &mut computed,
                    [padded.tap(t), padded.tap(t + 1), padded.tap(t + 2)],
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

    #[test]
    fn matches_the_definition_on_odd_and_even_sizes() {
        let mut rng = fastrand::Rng::with_seed(3);
        for (in_hw, stride) in [((112, 112), 2), ((7, 5), 2), ((6, 9), 1), ((1, 1), 2)] {
            let (h, w) = in_hw;
            let out_hw = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let window = Window {
                in_hw,
                out_hw,
                stride,
            };
            let planes = 3;
            let image: Vec<f32> = (0..planes * h * w).map(|_| rng.f32() - 2.0).collect();
            let mut out = vec![f32::NAN; planes * out_hw.0 * out_hw.1];
            run(window, &image, &mut out).unwrap();
            let mut i = 0;
            for p in 0..planes {
                for y in 0..out_hw.0 {
                    for x in 0..out_hw.1 {
                        let mut best = f32::NEG_INFINITY;
                        for iy in (stride * y).saturating_sub(1)..(stride * y + 2).min(h) {
                            for ix in (stride * x).saturating_sub(1)..(stride * x + 2).min(w) {
                                best = best.max(image[p * h * w + iy * w + ix]);
                            }
                        }
                        assert_eq!(out[i], best, "{in_hw:?} s{stride} plane {p} ({y},{x})");
                        i += 1;
                    }
                }
            }
        }
    }
}
