//! ShuffleNet's channel shuffle and split, as one copy.
//!
//! Each ShuffleNet-v2 unit ends with `Concat(a, b)` on channels, a reshape to
//! `[2, c, h, w]`, a transpose to `[c, 2, h, w]`, a reshape back to `[2c, h, w]` (so the
//! channels of `a` and `b` alternate), and a split of that into two halves. tract runs that as
//! five nodes and three copies of the data. [`ShuffleSplit`] writes each plane of `a` and `b`
//! once, straight to where it ends up: interleaved channel `k` is `a[k / 2]` for even `k` and
//! `b[k / 2]` for odd `k`; channels `0..c` form the first output and `c..2c` the second. The
//! last unit of a stage is not split (the next unit reads all channels): then the op has one
//! output, the whole interleaved tensor.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Slice, TypedConcat};
use tract_onnx::tract_core::ops::change_axes::AxisOp;

use crate::model::assist;

/// The operator that replaces a channel shuffle of two groups, and the split in halves that
/// follows it if there is one.
///
/// Inputs: `a` and `b`, of the same shape `[.., c, h, w]`. Outputs: with `split`, the two
/// halves, each of that shape; else the whole shuffled tensor `[.., 2c, h, w]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ShuffleSplit {
    pub split: bool,
}

impl Op for ShuffleSplit {
    fn name(&self) -> StaticName {
        "ShuffleSplit".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ShuffleSplit {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape = a.shape().to_vec();
        ensure!(
            shape.len() >= 3 && b.shape() == shape.as_slice(),
            "ShuffleSplit inputs differ"
        );
        let c = shape[shape.len() - 3];
        let plane = shape[shape.len() - 2..].iter().product::<usize>();
        let mut whole_shape = shape.clone();
        whole_shape[shape.len() - 3] = 2 * c;
        let (mut first, mut second) = if self.split {
            (super::output_tensor(&shape)?, super::output_tensor(&shape)?)
        } else {
            (
                super::output_tensor(&whole_shape)?,
                super::output_tensor(&[0])?,
            )
        };
        {
            let a = a.try_as_plain_ram()?;
            let b = b.try_as_plain_ram()?;
            let mut first = first.try_as_plain_ram_mut()?;
            let mut second = second.try_as_plain_ram_mut()?;
            shuffle_split(
                c * plane,
                plane,
                [a.as_slice::<f32>()?, b.as_slice::<f32>()?],
                [first.as_slice_mut::<f32>()?, second.as_slice_mut::<f32>()?],
            );
        }
        if self.split {
            Ok(tvec!(first.into_tvalue(), second.into_tvalue()))
        } else {
            Ok(tvec!(first.into_tvalue()))
        }
    }
}

impl TypedOp for ShuffleSplit {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 && inputs[0] == inputs[1],
            "ShuffleSplit takes two equal inputs"
        );
        ensure!(inputs[0].datum_type == f32::datum_type() && inputs[0].rank() >= 3);
        let fact = f32::fact(inputs[0].shape.clone());
        if self.split {
            return Ok(tvec!(fact.clone(), fact));
        }
        let mut whole = inputs[0].shape.to_tvec();
        let axis = whole.len() - 3;
        whole[axis] = whole[axis].clone() * 2;
        Ok(tvec!(f32::fact(whole)))
    }

    as_op!();
}

/// Interleave the channel planes of `inputs` (images of `image` values, planes of `plane`
/// values) and write channels `0..c` of each image to `outputs[0]` and `c..2c` to
/// `outputs[1]`; or, when `outputs[1]` is empty, all `2c` to `outputs[0]`.
fn shuffle_split(image: usize, plane: usize, inputs: [&[f32]; 2], outputs: [&mut [f32]; 2]) {
    if plane == 0 {
        return;
    }
    let c = image / plane;
    let [first, second] = outputs;
    // Each output with the channels it holds per image and the first of them (in the
    // interleaved order): its planes are copied in runs shared with helping threads.
    let targets = if second.is_empty() {
        [(first, 2 * c, 0), (second, 1, 0)]
    } else {
        [(first, c, 0), (second, c, c)]
    };
    for (target, per_image, offset) in targets {
        assist::for_each_run(target, plane, 1, |first, run| {
            for (i, out) in run.chunks_exact_mut(plane).enumerate() {
                let index = first + i;
                out.copy_from_slice(source_plane(
                    inputs,
                    image,
                    plane,
                    index / per_image,
                    index % per_image + offset,
                ));
            }
        });
    }
}

/// Channel `k` of image `n` of the interleaved pair `inputs` (even channels from the first,
/// odd ones from the second).
fn source_plane(inputs: [&[f32]; 2], image: usize, plane: usize, n: usize, k: usize) -> &[f32] {
    let start = n * image + (k / 2) * plane;
    &inputs[k % 2][start..start + plane]
}

/// What [`match_shuffle_split`] found.
pub(crate) struct ShuffleMatch {
    /// The concat, reshape, transpose and reshape nodes.
    pub shuffle: [usize; 4],
    /// The slices taking the first and second halves, if the shuffle is split.
    pub halves: Option<[usize; 2]>,
}

/// If `concat` is the start of a channel shuffle (see the module documentation), its nodes.
pub(crate) fn match_shuffle_split(
    model: &TypedModel,
    concat: &TypedNode,
) -> TractResult<Option<ShuffleMatch>> {
    let Some(op) = concat.op_as::<TypedConcat>() else {
        return Ok(None);
    };
    let facts = model.node_input_facts(concat.id)?;
    let (Some(shape), true) = (
        facts.first().and_then(|f| f.shape.as_concrete()),
        facts.len() == 2,
    ) else {
        return Ok(None);
    };
    let rank = shape.len();
    if rank < 3
        || op.axis != rank - 3
        || facts[0] != facts[1]
        || facts[0].datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    let c = shape[rank - 3];
    let axis = rank - 3;
    // Each step: the only consumer of the previous node, with the expected op and output shape.
    let next = |node: &TypedNode| -> Option<usize> {
        let out = node.outputs.first()?;
        (node.outputs.len() == 1 && out.successors.len() == 1).then(|| out.successors[0].node)
    };
    let shape_of = |id: usize| {
        model
            .outlet_fact(OutletId::new(id, 0))
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()))
    };
    let with = |dims: &[usize]| {
        let mut s = shape[..axis].to_vec();
        s.extend_from_slice(dims);
        s.extend_from_slice(&shape[rank - 2..]);
        s
    };
    let outputs = model.output_outlets()?;
    let is_internal = |id: usize| !outputs.contains(&OutletId::new(id, 0));
    let Some(split) = next(concat).filter(|&id| is_internal(concat.id) && is_internal(id)) else {
        return Ok(None);
    };
    let split_node = &model.nodes[split];
    let Some(moved) = next(split_node).filter(|&id| is_internal(id)) else {
        return Ok(None);
    };
    let Some(merged) = next(&model.nodes[moved]).filter(|&id| is_internal(id)) else {
        return Ok(None);
    };
    let is_reshape =
        |id: usize| matches!(model.nodes[id].op_as::<AxisOp>(), Some(AxisOp::Reshape(..)));
    let is_swap = matches!(
        model.nodes[moved].op_as::<AxisOp>(),
        Some(&AxisOp::Move(from, to)) if (from == axis && to == axis + 1) || (from == axis + 1 && to == axis)
    );
    if !is_reshape(split)
        || !is_swap
        || !is_reshape(merged)
        || shape_of(split) != Some(with(&[2, c]))
        || shape_of(moved) != Some(with(&[c, 2]))
        || shape_of(merged) != Some(with(&[2 * c]))
    {
        return Ok(None);
    }
    let shuffle = [concat.id, split, moved, merged];
    Ok(Some(ShuffleMatch {
        shuffle,
        halves: halves(model, merged, axis, c),
    }))
}

/// The two slices taking channels `0..c` and `c..2c` of `node`'s output, if they are its
/// only consumers.
fn halves(model: &TypedModel, node: usize, axis: usize, c: usize) -> Option<[usize; 2]> {
    let successors = &model.nodes[node].outputs[0].successors;
    if successors.len() != 2 {
        return None;
    }
    let mut halves = [None, None];
    for succ in successors {
        let slice = model.nodes[succ.node].op_as::<Slice>()?;
        if slice.axis != axis {
            return None;
        }
        if slice.start == 0.to_dim() && slice.end == c.to_dim() {
            halves[0] = Some(succ.node);
        } else if slice.start == c.to_dim() && slice.end == (2 * c).to_dim() {
            halves[1] = Some(succ.node);
        }
    }
    Some([halves[0]?, halves[1]?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_then_splits() {
        // 2 images, c = 3 channels of 2 values each.
        let (c, plane) = (3, 2);
        let a: Vec<f32> = (0..2 * c * plane).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..2 * c * plane).map(|v| 100.0 + v as f32).collect();
        let (mut first, mut second) = (vec![f32::NAN; a.len()], vec![f32::NAN; a.len()]);
        shuffle_split(c * plane, plane, [&a, &b], [&mut first, &mut second]);
        let mut whole = vec![f32::NAN; 2 * a.len()];
        shuffle_split(c * plane, plane, [&a, &b], [&mut whole, &mut []]);
        // The reference: concat, [2, c] -> [c, 2], flatten, split.
        for n in 0..2 {
            let image = |src: &[f32], ch: usize| {
                src[(n * c + ch) * plane..(n * c + ch + 1) * plane].to_vec()
            };
            let interleaved: Vec<Vec<f32>> = (0..2 * c)
                .map(|k| {
                    if k % 2 == 0 {
                        image(&a, k / 2)
                    } else {
                        image(&b, k / 2)
                    }
                })
                .collect();
            for k in 0..c {
                assert_eq!(image(&first, k), interleaved[k]);
                assert_eq!(image(&second, k), interleaved[c + k]);
            }
            for (k, expected) in interleaved.iter().enumerate() {
                let at = (n * 2 * c + k) * plane;
                assert_eq!(&whole[at..at + plane], expected.as_slice());
            }
        }
    }
}
