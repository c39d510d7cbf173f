//! Our own kernels for the operators tract runs far below what their arithmetic needs.
//!
//! Profiling the default model (`cargo run --release --example profile_ops`) showed tract
//! spending over a third of an inference in three kinds of node that do little arithmetic:
//! depthwise 3×3 convolutions, the first 3×3 convolution (3 input channels) with its ReLU,
//! a 3×3 max-pool, and the five nodes of each channel shuffle. [`substitute`] rewrites a decluttered tract graph, replacing each such
//! node whose geometry our kernels serve exactly (NCHW or CHW float32, 3×3 window, stride 1 or
//! 2, one pixel of padding before each axis, no dilation; a shuffle of exactly the ShuffleNet
//! form) with an operator of this module.
//! Every other node, and every node whose geometry differs, stays tract's; tract then
//! optimizes the rewritten graph as usual (matrix products, the bulk of the work, stay its).
//!
//! The results equal tract's within float rounding (the sums run in another order); the
//! fidelity tests compare the whole model with onnxruntime's logits either way, and
//! `EngineOptions::custom_kernels` turns the rewrite off.

mod conv3x3;
mod depthwise;
mod maxpool;
mod plane;
mod shuffle;
mod simd;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::DataFormat;

use conv3x3::StemConv3x3;
use depthwise::Depthwise3x3;
use maxpool::MaxPool3x3;
use plane::Window;
use shuffle::ShuffleSplit;

/// A float32 tensor of `shape` for a kernel of this module to fill, not zeroed first.
///
/// Zeroing cost a tenth of our kernels' time, for values they overwrite anyway (the same
/// choice tract's own operators make).
fn output_tensor(shape: &[usize]) -> TractResult<Tensor> {
    // SAFETY: f32 has no invalid bit patterns, and every kernel of this module writes every
    // element of its output before returning it: each one's unit test runs it on an output
    // filled with NaN and compares every element with the definition.
    unsafe { Tensor::uninitialized::<f32>(shape) }
}

/// Evaluate a kernel of this module: `kernel` gets the float32 values of every input and the
/// output (of `shape`, not zeroed) to fill, which becomes the op's one result.
fn eval_into(
    shape: &[usize],
    inputs: &[TValue],
    kernel: impl FnOnce(&[&[f32]], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let mut output = output_tensor(shape)?;
    {
        let views = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<Vec<_>>>()?;
        let values = views
            .iter()
            .map(|v| v.as_slice::<f32>())
            .collect::<TractResult<Vec<_>>>()?;
        let mut out = output.try_as_plain_ram_mut()?;
        kernel(&values, out.as_slice_mut::<f32>()?)?;
    }
    Ok(tvec!(output.into_tvalue()))
}

/// The concrete shape of the first of `inputs`, after checking that there are `count` of them.
fn concrete_input<'a>(
    op: &str,
    inputs: &[&'a TypedFact],
    count: usize,
) -> TractResult<&'a [usize]> {
    ensure!(
        inputs.len() == count,
        "{op} takes {count} inputs, not {}",
        inputs.len()
    );
    inputs[0]
        .shape
        .as_concrete()
        .with_context(|| format!("{op} needs a concrete input shape"))
}

/// A convolution's kernel (input 1) holds `kernel_values` values and its bias (input 2) one
/// value per output channel, or one shared value.
fn check_kernel_and_bias(
    inputs: &[&TypedFact],
    kernel_values: usize,
    channels: usize,
) -> TractResult<()> {
    ensure!(
        inputs[1].shape.volume() == kernel_values.to_dim(),
        "the kernel must hold {kernel_values} values"
    );
    let bias = inputs[2].shape.volume();
    ensure!(
        bias == channels.to_dim() || bias == 1.to_dim(),
        "the bias must hold one value per output channel ({channels}) or one"
    );
    Ok(())
}

/// How many nodes [`substitute`] replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Substituted {
    /// Depthwise 3×3 convolutions now run by [`Depthwise3x3`].
    pub depthwise: usize,
    /// 3×3 convolutions over a few input channels now run by [`StemConv3x3`].
    pub stem_convs: usize,
    /// ReLUs fused into the convolution before them.
    pub fused_relus: usize,
    /// 3×3 max-pools now run by [`MaxPool3x3`].
    pub max_pools: usize,
    /// Channel shuffles with their split, now run by [`ShuffleSplit`].
    pub shuffles: usize,
}

/// Replace, in a decluttered graph, the nodes our kernels serve (see the module docs).
pub(crate) fn substitute(model: &mut TypedModel) -> TractResult<Substituted> {
    let mut done = Substituted::default();
    for id in model.eval_order()? {
        let node = &model.nodes[id];
        if let Some(found) = shuffle::match_shuffle_split(model, node)? {
            let split = found.halves.is_some();
            let mut patch = TypedModelPatch::default();
            let inputs = patch.taps(model, &node.inputs)?;
            let wires = patch.wire_node(&node.name, ShuffleSplit { split }, &inputs)?;
            let ends = found.halves.map_or(vec![found.shuffle[3]], Vec::from);
            for (end, wire) in ends.iter().zip(wires) {
                patch.shunt_outside(model, OutletId::new(*end, 0), wire)?;
            }
            for node in found
                .shuffle
                .into_iter()
                .chain(found.halves.into_iter().flatten())
            {
                patch.obliterate(node)?;
            }
            patch.apply(model)?;
            done.shuffles += 1;
            continue;
        }
        // The ReLU node a replacement absorbs, if any.
        let mut relu = None;
        let replacement: Option<Box<dyn TypedOp>> = if let Some(conv) = node.op_as::<Conv>() {
            if let Some(window) = depthwise_window(model, node, conv)? {
                done.depthwise += 1;
                Some(Box::new(Depthwise3x3 { window }))
            } else if let Some((window, in_channels, out_channels)) =
                stem_window(model, node, conv)?
            {
                relu = following_relu(model, node)?;
                done.stem_convs += 1;
                done.fused_relus += usize::from(relu.is_some());
                Some(Box::new(StemConv3x3 {
                    window,
                    in_channels,
                    out_channels,
                    relu: relu.is_some(),
                }))
            } else {
                None
            }
        } else if let Some(pool) = node.op_as::<MaxPool>() {
            let input = model.outlet_fact(node.inputs[0])?;
            (pool.with_index_outputs.is_none())
                .then(|| window_3x3(&pool.pool_spec, input))
                .flatten()
                .map(|window| {
                    done.max_pools += 1;
                    Box::new(MaxPool3x3 { window }) as _
                })
        } else {
            None
        };
        if let Some(op) = replacement {
            let mut patch = TypedModelPatch::default();
            let inputs = patch.taps(model, &node.inputs)?;
            let wire = patch.wire_node(&node.name, op, &inputs)?[0];
            patch.shunt_outside(model, OutletId::new(relu.unwrap_or(id), 0), wire)?;
            patch.obliterate(id)?;
            if let Some(relu) = relu {
                patch.obliterate(relu)?;
            }
            patch.apply(model)?;
        }
    }
    model.compact()?;
    Ok(done)
}

/// The ReLU (`max(x, 0)`) that is the only consumer of `node`'s only output, if there is one.
fn following_relu(model: &TypedModel, node: &TypedNode) -> TractResult<Option<usize>> {
    let output = OutletId::new(node.id, 0);
    if node.outputs.len() != 1
        || node.outputs[0].successors.len() != 1
        || model.output_outlets()?.contains(&output)
    {
        return Ok(None);
    }
    let next = &model.nodes[node.outputs[0].successors[0].node];
    let is_max = next
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Max>() && op.1.is_none());
    if !is_max || next.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(&other) = next.inputs.iter().find(|&&i| i != output) else {
        return Ok(None);
    };
    let floor = model.outlet_fact(other)?;
    let is_zero = floor
        .uniform
        .as_ref()
        .is_some_and(|t| t.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0));
    let same_shape =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(output)?.shape;
    Ok((is_zero && same_shape).then_some(next.id))
}

/// The window and channels of a float dense 3×3 `Conv` over at most
/// [`conv3x3::MAX_IN_CHANNELS`] input channels, if it is one.
fn stem_window(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<(Window, usize, usize)>> {
    let spec = &conv.pool_spec;
    let facts = model.node_input_facts(node.id)?;
    let (cin, cout) = (spec.input_channels, spec.output_channels);
    let is_stem = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == 1
        && cin <= conv3x3::MAX_IN_CHANNELS
        && facts.len() == 3
        && facts[1].datum_type == f32::datum_type()
        && facts[1].shape.as_concrete() == Some(&[cout, cin, 3, 3][..])
        && facts[2].datum_type == f32::datum_type()
        && (facts[2].shape.volume() == cout.to_dim() || facts[2].shape.volume() == 1.to_dim());
    Ok(is_stem
        .then(|| window_3x3(spec, facts[0]))
        .flatten()
        .map(|window| (window, cin, cout)))
}

/// The window of a float depthwise 3×3 `Conv` our kernel serves, if it is one.
fn depthwise_window(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<Window>> {
    let spec = &conv.pool_spec;
    let facts = model.node_input_facts(node.id)?;
    let channels = spec.input_channels;
    let is_depthwise = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == channels
        && spec.output_channels == channels
        && facts.len() == 3
        && facts[1].datum_type == f32::datum_type()
        && facts[1].shape.as_concrete() == Some(&[channels, 1, 3, 3][..])
        && facts[2].datum_type == f32::datum_type()
        && (facts[2].shape.volume() == channels.to_dim() || facts[2].shape.volume() == 1.to_dim());
    Ok(is_depthwise.then(|| window_3x3(spec, facts[0])).flatten())
}

/// The window of a 3×3, stride 1 or 2, NCHW (or CHW) float32 pool spec with one pixel of
/// padding before each axis, on a concrete input: what our kernels serve.
fn window_3x3(spec: &PoolSpec, input: &TypedFact) -> Option<Window> {
    let rank = match spec.data_format {
        DataFormat::NCHW => 4,
        DataFormat::CHW => 3,
        _ => return None,
    };
    if spec.kernel_shape.as_slice() != [3, 3]
        || spec.dilations().iter().any(|&d| d != 1)
        || input.datum_type != f32::datum_type()
    {
        return None;
    }
    let shape = input.shape.as_concrete()?;
    let strides = spec.strides();
    if shape.len() != rank || shape[rank - 3] != spec.input_channels || strides[0] != strides[1] {
        return None;
    }
    let padding = spec.computed_padding(&shape[rank - 2..]);
    if padding.iter().any(|p| p.pad_before != 1) {
        return None;
    }
    let window = Window {
        in_hw: (shape[rank - 2], shape[rank - 1]),
        out_hw: (padding[0].convoluted, padding[1].convoluted),
        stride: strides[0],
    };
    window.is_supported().then_some(window)
}
