//! Our own kernels for the operators tract runs far below what their arithmetic needs.
//!
//! Profiling the default model (`cargo run --release --example profile_ops`) showed tract
//! spending over a third of an inference in nodes that do little arithmetic: depthwise 3×3
//! convolutions, the first 3×3 convolution (3 input channels) with its ReLU, a 3×3 max-pool,
//! and the five nodes of each channel shuffle; and its matrix products for the 1×1
//! convolutions reach about a third of the CPU's peak on these small shapes.
//! [`substitute`] rewrites a decluttered tract graph, replacing each such node whose geometry
//! our kernels serve exactly (NCHW or CHW float32, 3×3 window, stride 1 or 2, one pixel of
//! padding before each axis, no dilation; a shuffle of exactly the ShuffleNet form; a 1×1
//! convolution as tract's declutter writes it, on CPUs with AVX-512F or AVX2) with an
//! operator of this module. Every other node, and every node whose geometry differs, stays
//! tract's; tract then optimizes the rewritten graph as usual.
//!
//! The results equal tract's within float rounding (the sums run in another order); the
//! fidelity tests compare the whole model with onnxruntime's logits either way, and
//! `EngineOptions::custom_kernels` turns the rewrite off.

mod conv3x3;
mod depthwise;
mod maxpool;
mod plane;
mod pointwise;
mod shuffle;
mod simd;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Max};
use tract_onnx::tract_core::ops::nn::DataFormat;

use conv3x3::StemConv3x3;
use depthwise::Depthwise3x3;
use maxpool::MaxPool3x3;
use plane::Window;
use pointwise::Pointwise1x1;
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

/// A convolution's bias as one value per output channel: `bias` holds that, or one value
/// shared by all `channels`.
fn per_channel_bias(bias: &[f32], channels: usize) -> TractResult<Vec<f32>> {
    match bias.len() {
        1 => Ok(vec![bias[0]; channels]),
        n if n == channels => Ok(bias.to_vec()),
        n => bail!("bias has {n} values for {channels} channels"),
    }
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
    /// 1×1 convolutions (tract's `EinSum`, with the bias `Add` after it) now run by
    /// [`Pointwise1x1`]; only on CPUs with AVX-512F, or AVX2 and FMA.
    pub pointwise: usize,
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
        if let Some(found) = pointwise_match(model, node)? {
            let mut patch = TypedModelPatch::default();
            let mut inputs = patch.taps(model, &node.inputs)?;
            if let Some(weights) = found.permuted {
                inputs[1] = patch.add_const(format!("{}.weights", node.name), weights)?;
            }
            let bias = match found.bias {
                Some((_, bias)) => patch.tap_model(model, bias)?,
                None => patch.add_const(format!("{}.zero_bias", node.name), tensor0(0f32))?,
            };
            inputs.push(bias);
            let wire = patch.wire_node(&node.name, found.op, &inputs)?[0];
            let last = found.relu.or(found.bias.map(|(add, _)| add)).unwrap_or(id);
            patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
            patch.obliterate(id)?;
            for absorbed in found.bias.map(|(add, _)| add).into_iter().chain(found.relu) {
                patch.obliterate(absorbed)?;
            }
            patch.apply(model)?;
            done.pointwise += 1;
            done.fused_relus += usize::from(found.relu.is_some());
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

/// A 1×1 convolution found in the decluttered graph: the op to run, its weights permuted to the
/// image's channel order (when they differ), the bias `Add` it absorbs (node, bias outlet) and
/// the ReLU it absorbs.
struct PointwiseFound {
    op: Pointwise1x1,
    permuted: Option<Tensor>,
    bias: Option<(usize, OutletId)>,
    relu: Option<usize>,
}

/// The 1×1 convolution that `node` is, if it is one our kernel serves: a float32 `EinSum`
/// of an image with a weight matrix, as tract's declutter of a 1×1 `Conv` makes it, with the
/// per-channel bias `Add` and the ReLU that follow it, when they do.
///
/// The image's axes are: batch axes (kept in the output, or of size 1 and dropped), then one
/// or more channel axes that are summed against the weights' axes `1..` (tract folds a channel
/// shuffle's reshape into the product that way: `aIHW,OaI->OHW`; with its transpose too, the
/// order differs: `IaHW,OaI->OHW`, and the weights are permuted to the image's order), then H
/// and W. The weights' axis 0 is the output channel, just before H and W in the output.
/// Channel-major memory makes that exactly a 1×1 convolution over the flattened channels.
fn pointwise_match(model: &TypedModel, node: &TypedNode) -> TractResult<Option<PointwiseFound>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if !pointwise::available() || einsum.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let output_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(image), Some(weights), Some(output)) = (
        facts[0].shape.as_concrete(),
        facts[1].shape.as_concrete(),
        output_fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let all_f32 = facts.iter().all(|f| f.datum_type == f32::datum_type())
        && einsum.operating_dt == f32::datum_type()
        && output_fact.datum_type == f32::datum_type();
    let (rank, out_rank, groups) = (image.len(), output.len(), weights.len().saturating_sub(1));
    let empty = image.contains(&0) || weights.contains(&0);
    if !all_f32 || empty || groups == 0 || rank < groups + 2 || out_rank < 3 {
        return Ok(None);
    }
    let axes = &einsum.axes;
    // Where an image axis goes: (weights, output) positions.
    let lands = |i: usize, weights_at: &[usize], out_at: &[usize]| {
        axes.axis((InOut::In(0), i)).is_ok_and(|axis| {
            axis.interface(InOut::In(0)) == [i]
                && axis.interface(InOut::In(1)) == weights_at
                && axis.interface(InOut::Out(0)) == out_at
        })
    };
    let channels_start = rank - 2 - groups;
    let mut kept = 0;
    let batch_ok = (0..channels_start).all(|i| {
        if lands(i, &[], &[kept]) {
            kept += 1;
            true
        } else {
            image[i] == 1 && lands(i, &[], &[])
        }
    });
    // The weights' axis of each of the image's channel axes, in the image's order.
    let order: Option<Vec<usize>> = (0..groups)
        .map(|g| {
            let i = channels_start + g;
            (1..=groups).find(|&w| lands(i, &[w], &[]))
        })
        .collect();
    let is_conv = batch_ok
        && kept + 3 == out_rank
        && axes.iter_all_axes().count() == rank + 1
        && lands(rank - 2, &[], &[out_rank - 2])
        && lands(rank - 1, &[], &[out_rank - 1])
        && axes.axis((InOut::In(1), 0)).is_ok_and(|axis| {
            axis.interface(InOut::In(0)).is_empty()
                && axis.interface(InOut::Out(0)) == [out_rank - 3]
        });
    let Some(order) = order.filter(|_| is_conv) else {
        return Ok(None);
    };
    // Channel axes in another order than the weights' (a channel shuffle folded into the
    // product, `IaHW,OaI->OHW`): the weights, a constant, are permuted to the image's order.
    let permuted = if order.iter().enumerate().all(|(g, &w)| w == g + 1) {
        None
    } else {
        let Some(konst) = &facts[1].konst else {
            return Ok(None);
        };
        let axes: Vec<usize> = std::iter::once(0).chain(order.iter().copied()).collect();
        Some(konst.clone().into_tensor().permute_axes(&axes)?)
    };
    let (cin, cout) = (weights[1..].iter().product(), weights[0]);
    let op = |relu: Option<usize>| Pointwise1x1 {
        in_channels: cin,
        out_channels: cout,
        relu: relu.is_some(),
        output_shape: output.to_vec(),
    };
    let Some(add) = sole_successor(model, node)? else {
        return Ok(Some(PointwiseFound {
            op: op(None),
            permuted,
            bias: None,
            relu: None,
        }));
    };
    let einsum_output = OutletId::new(node.id, 0);
    let is_add = add
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Add>() && op.1.is_none());
    let bias = add.inputs.iter().find(|&&i| i != einsum_output).copied();
    let bias = match bias {
        Some(bias) if is_add && add.inputs.len() == 2 => {
            let fact = model.outlet_fact(bias)?;
            let per_channel = fact.shape.as_concrete().is_some_and(|shape| {
                shape.len() == out_rank
                    && shape
                        .iter()
                        .enumerate()
                        .all(|(axis, &d)| d == 1 || (axis == out_rank - 3 && d == cout))
            });
            let same_shape =
                model.outlet_fact(OutletId::new(add.id, 0))?.shape == output_fact.shape;
            (fact.konst.is_some()
                && fact.datum_type == f32::datum_type()
                && per_channel
                && same_shape)
                .then_some((add.id, bias))
        }
        _ => None,
    };
    let relu = following_relu(model, bias.map_or(node, |(add, _)| &model.nodes[add]))?;
    Ok(Some(PointwiseFound {
        op: op(relu),
        permuted,
        bias,
        relu,
    }))
}

/// The node that is the only consumer of `node`'s only output, if there is one and that output
/// is not a model output.
fn sole_successor<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<&'m TypedNode>> {
    let output = OutletId::new(node.id, 0);
    if node.outputs.len() != 1
        || node.outputs[0].successors.len() != 1
        || model.output_outlets()?.contains(&output)
    {
        return Ok(None);
    }
    Ok(Some(&model.nodes[node.outputs[0].successors[0].node]))
}

/// The ReLU (`max(x, 0)`) that is the only consumer of `node`'s only output, if there is one.
fn following_relu(model: &TypedModel, node: &TypedNode) -> TractResult<Option<usize>> {
    let output = OutletId::new(node.id, 0);
    let Some(next) = sole_successor(model, node)? else {
        return Ok(None);
    };
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
        && simd::blocked_kernels_vectorized()
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
