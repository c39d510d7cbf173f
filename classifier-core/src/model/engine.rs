//! The inference engine: one ONNX model loaded with tract, optimized plans shared by threads.
//!
//! tract runs a plan optimized for a *concrete* input shape 2-6x faster than one with a
//! symbolic batch dimension, so the engine keeps one optimized plan per batch size it has
//! been asked for, built on first use and then shared (`Arc`) by every thread. The batch-1
//! plan is built at load time so the first request does not pay for it. Models whose graph
//! hard-codes the batch ([`BatchSupport::Fixed`]) run larger batches one image at a time.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use super::manifest::{BatchSupport, ModelEntry};
use crate::error::{Error, Result};
use crate::preprocess::Layout;

type Plan = Arc<TypedRunnableModel>;

/// Options for how tract executes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Largest batch run as one tract call; larger batches are split. 1 disables batching.
    pub max_native_batch: usize,
    /// Threads tract-linalg may use inside one inference (1 = single-threaded, the best
    /// choice when several workers already keep every core busy).
    pub intra_op_threads: usize,
    /// Run depthwise 3×3 convolutions, 3×3 convolutions over at most 4 input channels (with
    /// their ReLU), 3×3 max-pools, channel shuffles and, on CPUs with AVX-512F or AVX2, 1×1
    /// convolutions (with their bias and ReLU) with this crate's kernels instead of tract's
    /// (see `model::kernels`): same results within float rounding, several times less time in
    /// those operators. `false` leaves the whole graph to tract.
    pub custom_kernels: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_native_batch: 8,
            intra_op_threads: 1,
            custom_kernels: true,
        }
    }
}

/// A loaded, optimized model. Cheap to share: wrap it in an `Arc`.
pub struct Engine {
    version: String,
    batch: BatchSupport,
    layout: Layout,
    input_hw: (usize, usize),
    num_classes: usize,
    options: EngineOptions,
    /// The decoded ONNX graph, kept to optimize plans for new batch sizes.
    source: InferenceModel,
    plans: Mutex<HashMap<usize, Plan>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("version", &self.version)
            .field("batch", &self.batch)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn tract_err(version: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::ModelLoad {
        version: version.to_string(),
        reason: format!("{e:#}"),
    }
}

/// Take Intel AMX int8 out of the instruction set tract dispatches to, unless the deployer set
/// `TRACT_CPU_ISA` (tract's own knob) themselves. Runs once, before tract first probes the CPU.
///
/// On CPUs with AMX (Sapphire Rapids and later), tract 0.23.9 runs the integer matrix products
/// of quantized models with its `avx512amx_mmm_i32_8x8` kernel, which reads past the end of its
/// packed input: `gdb` caught the test process dying of SIGSEGV in its `tileloadd` of the B
/// tile, in about one run in four (it depends on what lies after the buffer). With AMX int8
/// removed tract uses its AVX-512 VNNI kernels for the same products.
fn keep_tract_off_amx_int8() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use tract_linalg::isa::{native, Isa};
            if std::env::var_os("TRACT_CPU_ISA").is_none() {
                tract_linalg::knobs::TRACT_CPU_ISA.set(Some("-amx-int8".to_string()));
            }
            if native().has(Isa::X86_64AmxInt8) {
                tracing::warn!(
                    "tract uses its AMX int8 kernels, which can crash on quantized models \
                     (TRACT_CPU_ISA=-amx-int8 avoids them)"
                );
            }
        }
    });
}

impl Engine {
    /// Parse `onnx_bytes` for `entry`, and build and check the batch-1 plan.
    pub fn load(entry: &ModelEntry, onnx_bytes: &[u8], options: EngineOptions) -> Result<Engine> {
        keep_tract_off_amx_int8();
        let source = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(onnx_bytes))
            .map_err(tract_err(&entry.version))?;
        let spec = &entry.preprocess;
        let engine = Engine {
            version: entry.version.clone(),
            batch: entry.batch,
            layout: spec.layout,
            input_hw: (spec.input_height as usize, spec.input_width as usize),
            num_classes: entry.num_classes,
            options: EngineOptions {
                max_native_batch: options.max_native_batch.max(1),
                intra_op_threads: options.intra_op_threads.max(1),
                ..options
            },
            source,
            plans: Mutex::new(HashMap::new()),
        };
        let plan = engine.plan(engine.plan_batch(1))?;
        let out = plan
            .model()
            .output_fact(0)
            .map_err(tract_err(&entry.version))?;
        let classes = out.shape.as_concrete().and_then(|s| s.last().copied());
        if classes != Some(entry.num_classes) {
            return Err(Error::ModelLoad {
                version: entry.version.clone(),
                reason: format!(
                    "output shape {:?} does not end in {} classes",
                    out.shape, entry.num_classes
                ),
            });
        }
        Ok(engine)
    }

    /// The model version this engine runs.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The largest number of images one tract call takes.
    pub fn max_native_batch(&self) -> usize {
        match self.batch {
            BatchSupport::Fixed(n) => n,
            BatchSupport::Dynamic => self.options.max_native_batch,
        }
    }

    /// The batch size of the plan that runs `n` images (fixed-batch models always use theirs).
    fn plan_batch(&self, n: usize) -> usize {
        match self.batch {
            BatchSupport::Fixed(size) => size,
            BatchSupport::Dynamic => n,
        }
    }

    fn input_shape(&self, batch: usize) -> [usize; 4] {
        let (h, w) = self.input_hw;
        match self.layout {
            Layout::Nchw => [batch, 3, h, w],
            Layout::Nhwc => [batch, h, w, 3],
        }
    }

    /// The optimized tract plan that runs exactly `batch` images, built and cached on first
    /// use: for tools that inspect or profile it (`examples/profile_ops.rs`).
    pub fn tract_plan(&self, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        self.plan(self.plan_batch(batch))
    }

    /// The optimized plan for exactly `batch` images, built and cached on first use.
    fn plan(&self, batch: usize) -> Result<Plan> {
        if let Some(plan) = self.lock_plans().get(&batch) {
            return Ok(plan.clone());
        }
        let started = std::time::Instant::now();
        let err = tract_err(&self.version);
        let mut options = RunOptions::default();
        if self.options.intra_op_threads > 1 {
            options.executor = Some(tract_linalg::multithread::Executor::multithread(
                self.options.intra_op_threads,
            ));
        }
        let mut model = self
            .source
            .clone()
            .with_input_fact(0, f32::fact(self.input_shape(batch)).into())
            .map_err(&err)?
            .into_typed()
            .map_err(&err)?
            .into_decluttered()
            .map_err(&err)?;
        let mut substituted = Default::default();
        if self.options.custom_kernels {
            // A graph our rewrite cannot handle (a model from a reloaded manifest, say) keeps
            // tract's operators rather than failing to load.
            let mut rewritten = model.clone();
            match super::kernels::substitute(&mut rewritten).and_then(|done| {
                #[cfg(test)]
                tests::fail_if_rewrite_broken()?;
                rewritten.optimize()?;
                Ok(done)
            }) {
                Ok(done) => (model, substituted) = (rewritten, done),
                Err(e) => {
                    tracing::warn!(version = %self.version, error = %format!("{e:#}"), "own kernels not used for this model");
                    model.optimize().map_err(&err)?;
                }
            }
        } else {
            model.optimize().map_err(&err)?;
        }
        let plan = model.into_runnable_with_options(&options).map_err(&err)?;
        tracing::debug!(
            version = %self.version,
            batch,
            ?substituted,
            elapsed = ?started.elapsed(),
            "optimized tract plan"
        );
        // Another thread may have built the same plan meanwhile; keep the first one.
        Ok(self.lock_plans().entry(batch).or_insert(plan).clone())
    }

    fn lock_plans(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Plan>> {
        // The map is only ever inserted into, so a poisoned lock still holds valid plans.
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the model on `n` preprocessed images laid out back to back in `input`
    /// (`n * tensor_len` values). Returns `n * num_classes` raw logits.
    ///
    /// Batches larger than [`max_native_batch`](Self::max_native_batch) are split; the rows
    /// are the same as running each image alone.
    pub fn run(&self, input: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let per_image = {
            let s = self.input_shape(1);
            s[1] * s[2] * s[3]
        };
        if n == 0 || input.len() != n * per_image {
            return Err(Error::Inference(format!(
                "expected {n} images of {per_image} values, got {} values",
                input.len()
            )));
        }
        let chunk = self.max_native_batch();
        if n <= chunk && self.plan_batch(n) == n {
            return self.run_exact(input, n);
        }
        let mut logits = Vec::with_capacity(n * self.num_classes);
        for images in input.chunks(chunk * per_image) {
            let count = images.len() / per_image;
            if self.plan_batch(count) == count {
                logits.extend(self.run_exact(images.to_vec(), count)?);
            } else {
                for image in images.chunks(per_image) {
                    logits.extend(self.run_exact(image.to_vec(), 1)?);
                }
            }
        }
        Ok(logits)
    }

    /// Run one tract call on exactly `batch` images.
    fn run_exact(&self, input: Vec<f32>, batch: usize) -> Result<Vec<f32>> {
        let plan = self.plan(batch)?;
        let tensor = Tensor::from_shape(&self.input_shape(batch), &input)
            .map_err(|e| Error::Inference(format!("{e:#}")))?;
        let outputs = plan
            .run(tvec![tensor.into_tvalue()])
            .map_err(|e| Error::Inference(format!("{e:#}")))?;
        let first = outputs
            .first()
            .ok_or_else(|| Error::Inference("model produced no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Inference(format!("{e:#}")))?;
        if view.len() != batch * self.num_classes {
            return Err(Error::Inference(format!(
                "output has {} values, expected {}",
                view.len(),
                batch * self.num_classes
            )));
        }
        Ok(view.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::model::{EngineOptions, ModelLocator};
    use crate::Classifier;

    thread_local! {
        /// Set by a test: plans built on this thread find their rewrite failed (after it has
        /// already changed its copy of the graph), as a bug in it would.
        static REWRITE_BROKEN: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn fail_if_rewrite_broken() -> TractResult<()> {
        if REWRITE_BROKEN.with(Cell::get) {
            return Err(TractError::msg("rewrite broken by a test"));
        }
        Ok(())
    }

    fn reference_input(photo: &str) -> Vec<f32> {
        let labels = ModelLocator::from_env()
            .find("imagenet_classes.txt")
            .expect("the shared models directory");
        let path = labels.with_file_name(format!("reference/inputs/{photo}.input.bin"));
        std::fs::read(&path)
            .expect("a reference input")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn ops_named(plan: &TypedRunnableModel, name: &str) -> usize {
        plan.model()
            .nodes
            .iter()
            .filter(|n| n.op().name() == name)
            .count()
    }

    /// A rewrite that fails must leave the model to tract's operators, from the graph as it
    /// was before the rewrite touched it: the plan holds none of our kernels and gives
    /// exactly what an engine without them gives.
    #[test]
    fn a_failed_rewrite_falls_back_to_tracts_operators_on_the_untouched_graph() {
        let ours = Classifier::builder()
            .version("shufflenet-v2-f32")
            .build()
            .expect("the default model");
        let theirs = Classifier::builder()
            .version("shufflenet-v2-f32")
            .engine_options(EngineOptions {
                custom_kernels: false,
                ..EngineOptions::default()
            })
            .build()
            .expect("the default model");
        let input: Vec<f32> = ["chelsea", "coffee"]
            .iter()
            .flat_map(|photo| reference_input(photo))
            .collect();

        // Batch 1 was built at load time with the rewrite working: our kernels are in it.
        let rewritten = ours.engine().tract_plan(1).expect("plan");
        assert_eq!(ops_named(&rewritten, "Depthwise3x3"), 19);

        // Batch 2 is built now, on this thread, with the rewrite failing.
        REWRITE_BROKEN.with(|b| b.set(true));
        let fallback = ours.engine().tract_plan(2);
        REWRITE_BROKEN.with(|b| b.set(false));
        let fallback = fallback.expect("the model still loads");
        for op in [
            "Depthwise3x3",
            "StemConv3x3",
            "MaxPool3x3",
            "ShuffleSplit",
            "Pointwise1x1",
        ] {
            assert_eq!(
                ops_named(&fallback, op),
                0,
                "{op} left in the fallback plan"
            );
        }
        let reference = theirs.engine().tract_plan(2).expect("plan");
        assert_eq!(
            ops_named(&fallback, "OptMatMul"),
            ops_named(&reference, "OptMatMul")
        );

        let got = ours.engine().run(input.clone(), 2).expect("inference");
        let want = theirs.engine().run(input, 2).expect("inference");
        assert_eq!(got, want, "the fallback is tract's own plan, bit for bit");
    }
}
