//! The primitives of our kernels, run with the CPU's widest vectors.
//!
//! The primitives are plain loops over equal-length slices, which LLVM vectorizes. The crate
//! is compiled for baseline x86-64 (SSE2, 4 floats), so each primitive also exists compiled
//! for AVX-512F (16 floats) and AVX2 (8 floats) and picks the widest the CPU has. Our kernels
//! call them once per tap row of a whole plane (hundreds of values), so the check costs
//! nothing measurable. With FMA the multiply-adds are fused (one rounding instead of two, and
//! half the instructions), so results differ between CPUs with and without FMA in the last
//! bits, as onnxruntime's and tract's do.

/// Defines a public primitive that runs its body compiled for AVX-512F or AVX2 + FMA when
/// the CPU has them (checked once per call, a cached atomic load), else as compiled. The body
/// is generic over `const FMA: bool`, true when fused multiply-adds are available (see
/// [`madd`]).
macro_rules! vectorized {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(unused)]
            fn body<const FMA: bool>($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature `avx512` is compiled with.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature `avx2` is compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body::<false>($($arg),*)
        }
    };
}

/// `acc + w * x`, fused (one rounding) when `FMA`; without hardware FMA `mul_add` would be a
/// slow library call, so then it is a multiply and an add.
#[inline(always)]
fn madd<const FMA: bool>(w: f32, x: f32, acc: f32) -> f32 {
    if FMA {
        w.mul_add(x, acc)
    } else {
        acc + w * x
    }
}

vectorized! {
    /// `out[x] += w[0] * a[0][x] + w[1] * a[1][x] + w[2] * a[2][x]` for every `x` of `out`.
    ///
    /// The `a` slices may be longer than `out`; their first `out.len()` values are used.
    fn multiply_add_3(out: &mut [f32], a: [&[f32]; 3], w: [f32; 3]) {
        let n = out.len();
        let (a0, a1, a2) = (&a[0][..n], &a[1][..n], &a[2][..n]);
        for (((o, &x0), &x1), &x2) in out.iter_mut().zip(a0).zip(a1).zip(a2) {
            *o = madd::<FMA>(w[2], x2, madd::<FMA>(w[1], x1, madd::<FMA>(w[0], x0, *o)));
        }
    }
}

vectorized! {
    /// `out[x] = max(out[x], a[0][x], a[1][x], a[2][x])` for every `x` of `out`.
    ///
    /// The `a` slices may be longer than `out`; their first `out.len()` values are used.
    fn max_3(out: &mut [f32], a: [&[f32]; 3]) {
        let n = out.len();
        let (a0, a1, a2) = (&a[0][..n], &a[1][..n], &a[2][..n]);
        for (((o, &x0), &x1), &x2) in out.iter_mut().zip(a0).zip(a1).zip(a2) {
            // Written as comparisons (not f32::max) so it compiles to vmaxps.
            let m = if x0 > x1 { x0 } else { x1 };
            let m = if m > x2 { m } else { x2 };
            *o = if *o > m { *o } else { m };
        }
    }
}

/// Lanes of the register-blocked dense kernel: one AVX-512 register of positions.
const LANES: usize = 16;

/// The most taps (input channels × 9) [`DenseRow`] takes.
pub(crate) const MAX_TAPS: usize = 36;

/// One output row of a dense convolution with few taps, for every output channel:
/// [`DenseRow::run`] writes `out[co * plane + offset + x] = bias[co] + sum_t weights[co * T +
/// t] * taps[t][x]` (then clamped at 0 if `relu`), for `x` in `0..taps[0].len()`, with
/// `T = taps.len()` at most [`MAX_TAPS`] and every tap as long as the first.
///
/// With AVX-512, positions go 16 at a time: their values for every tap are loaded into
/// registers once, then each output channel's sum stays in one register (written with
/// intrinsics: the compiler's vectorizer split such a 16-float array into pieces). With AVX2
/// and FMA (16 registers of 8 floats, too few to hold the taps), positions go 16 at a time and
/// output channels 6 at a time: their 12 sums stay in registers while the taps stream past.
/// Both add the taps in the same order with fused multiply-adds, so they give the same bits.
/// Positions left over (fewer than a vector) are done one by one.
pub(crate) struct DenseRow<'a> {
    /// The row's value of every tap (input channel × kernel position), at most [`MAX_TAPS`],
    /// each as long as the first.
    pub taps: &'a [&'a [f32]],
    /// `weights[co * taps.len() + t]`, output-channel-major.
    pub weights: &'a [f32],
    /// One per output channel.
    pub bias: &'a [f32],
    /// Clamp the sums at 0.
    pub relu: bool,
    /// Values per output channel plane of `out`.
    pub plane: usize,
}

impl DenseRow<'_> {
    /// Write the row at `offset..` of every output channel's plane of `out` (see [`DenseRow`]).
    pub(crate) fn run(&self, out: &mut [f32], offset: usize) {
        let n = self.taps.first().map_or(0, |t| t.len());
        let count = self.taps.len();
        assert!(count <= MAX_TAPS && self.taps.iter().all(|t| t.len() == n));
        assert!(self.weights.len() >= count * self.bias.len());
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            done = unsafe { dense_row_avx512(self, out, offset) };
        } else if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            done = unsafe { avx2::dense_row(self, out, offset) };
        }
        for x in done..n {
            for (co, &b) in self.bias.iter().enumerate() {
                let w = &self.weights[co * count..(co + 1) * count];
                let sum = self
                    .taps
                    .iter()
                    .zip(w)
                    .fold(b, |acc, (tap, &wt)| acc + wt * tap[x]);
                out[co * self.plane + offset + x] = if self.relu && sum < 0.0 { 0.0 } else { sum };
            }
        }
    }
}

/// [`DenseRow::run`] for the positions in whole groups of 16; returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dense_row_avx512(row: &DenseRow<'_>, out: &mut [f32], offset: usize) -> usize {
    use std::arch::x86_64::*;
    let DenseRow {
        taps,
        weights,
        bias,
        relu,
        plane,
    } = *row;
    let n = taps.first().map_or(0, |t| t.len());
    let count = taps.len();
    let mut x = 0;
    while x + LANES <= n {
        let mut values = [_mm512_setzero_ps(); MAX_TAPS];
        for (v, tap) in values.iter_mut().zip(taps) {
            let lanes: &[f32; LANES] = tap[x..x + LANES].try_into().expect("16 values");
            // SAFETY: `lanes` is 16 readable floats.
            *v = unsafe { _mm512_loadu_ps(lanes.as_ptr()) };
        }
        for (co, &b) in bias.iter().enumerate() {
            let w = &weights[co * count..(co + 1) * count];
            let mut acc = _mm512_set1_ps(b);
            for (&v, &wt) in values[..count].iter().zip(w) {
                acc = _mm512_fmadd_ps(_mm512_set1_ps(wt), v, acc);
            }
            if relu {
                acc = _mm512_max_ps(acc, _mm512_setzero_ps());
            }
            let at = co * plane + offset + x;
            let target: &mut [f32; LANES] =
                (&mut out[at..at + LANES]).try_into().expect("16 values");
            // SAFETY: `target` is 16 writable floats.
            unsafe { _mm512_storeu_ps(target.as_mut_ptr(), acc) };
        }
        x += LANES;
    }
    x
}

/// Whether the CPU has AVX2 and FMA: the narrower path of the register-blocked kernels
/// ([`DenseRow`], `Pointwise1x1`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Whether the register-blocked kernels ([`DenseRow`], `Pointwise1x1`) run vectorized on this
/// CPU (AVX-512F, or AVX2 with FMA). Without either they are scalar loops, several times
/// slower than tract's own operators, so the kernel substitution leaves those nodes to tract.
pub(crate) fn blocked_kernels_vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") || has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`DenseRow::run`] with AVX2 and FMA: blocks of 16 positions (two vectors) × up to 6 output
/// channels, whose 12 sums stay in registers while the taps stream past; each tap is loaded
/// once per block and each weight broadcast once for both vectors.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::DenseRow;
    use std::arch::x86_64::*;

    /// Positions per vector.
    const LANES: usize = 8;

    /// [`DenseRow::run`] for the positions in whole groups of 8; returns how many it did.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dense_row(row: &DenseRow<'_>, out: &mut [f32], offset: usize) -> usize {
        let n = row.taps.first().map_or(0, |t| t.len());
        let mut x = 0;
        while x + 2 * LANES <= n {
            row.channels::<2>(out, offset, x);
            x += 2 * LANES;
        }
        while x + LANES <= n {
            row.channels::<1>(out, offset, x);
            x += LANES;
        }
        x
    }

    impl DenseRow<'_> {
        /// Every output channel at positions `x..x + 8 * V`.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        fn channels<const V: usize>(&self, out: &mut [f32], offset: usize, x: usize) {
            let mut co = 0;
            while co + 6 <= self.bias.len() {
                self.block::<6, V>(out, offset, x, co);
                co += 6;
            }
            while co + 4 <= self.bias.len() {
                self.block::<4, V>(out, offset, x, co);
                co += 4;
            }
            while co < self.bias.len() {
                self.block::<1, V>(out, offset, x, co);
                co += 1;
            }
        }

        /// Output channels `co..co + G` at positions `x..x + 8 * V` of the taps, stored at
        /// `offset + x..` of each channel's plane.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        fn block<const G: usize, const V: usize>(
            &self,
            out: &mut [f32],
            offset: usize,
            x: usize,
            co: usize,
        ) {
            let count = self.taps.len();
            let mut acc = [[_mm256_setzero_ps(); V]; G];
            for (g, sums) in acc.iter_mut().enumerate() {
                *sums = [_mm256_set1_ps(self.bias[co + g]); V];
            }
            let weights = &self.weights[co * count..(co + G) * count];
            for (t, tap) in self.taps.iter().enumerate() {
                let lanes: &[f32] = &tap[x..x + V * LANES];
                let mut values = [_mm256_setzero_ps(); V];
                for (v, value) in values.iter_mut().enumerate() {
                    // SAFETY: `lanes` holds 8 * V readable floats.
                    *value = unsafe { _mm256_loadu_ps(lanes.as_ptr().add(v * LANES)) };
                }
                for (g, sums) in acc.iter_mut().enumerate() {
                    let w = _mm256_set1_ps(weights[g * count + t]);
                    for (sum, &value) in sums.iter_mut().zip(&values) {
                        *sum = _mm256_fmadd_ps(w, value, *sum);
                    }
                }
            }
            for (g, sums) in acc.into_iter().enumerate() {
                let start = (co + g) * self.plane + offset + x;
                let target = &mut out[start..start + V * LANES];
                for (v, sum) in sums.into_iter().enumerate() {
                    let sum = if self.relu {
                        _mm256_max_ps(sum, _mm256_setzero_ps())
                    } else {
                        sum
                    };
                    // SAFETY: `target` holds 8 * V writable floats.
                    unsafe { _mm256_storeu_ps(target.as_mut_ptr().add(v * LANES), sum) };
                }
            }
        }
    }
}

vectorized! {
    /// `first[k] = source[2k]` and `second[k] = source[2k + 1]` for every pair of `source`
    /// (and `first[k]` for a last unpaired value). Both outputs must be long enough.
    fn deinterleave(source: &[f32], first: &mut [f32], second: &mut [f32]) {
        let (pairs, rest) = source.as_chunks::<2>();
        let n = pairs.len();
        for ((a, b), pair) in first[..n].iter_mut().zip(&mut second[..n]).zip(pairs) {
            *a = pair[0];
            *b = pair[1];
        }
        if let [last] = rest {
            first[n] = *last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`DenseRow::run`] by its definition, in f64.
    fn dense_row_by_definition(
        taps: &[&[f32]],
        weights: &[f32],
        bias: &[f32],
        relu: bool,
    ) -> Vec<f64> {
        let n = taps[0].len();
        let mut out = Vec::new();
        for (co, &b) in bias.iter().enumerate() {
            for x in 0..n {
                let w = &weights[co * taps.len()..];
                let sum = taps.iter().enumerate().fold(f64::from(b), |acc, (t, tap)| {
                    acc + f64::from(w[t]) * f64::from(tap[x])
                });
                out.push(if relu { sum.max(0.0) } else { sum });
            }
        }
        out
    }

    #[test]
    fn dense_row_matches_its_definition_and_its_vector_paths_agree_bit_for_bit() {
        let mut rng = fastrand::Rng::with_seed(5);
        // Tap counts of 1 to 4 input channels; channel counts that exercise the blocks of 6,
        // 4 and 1; row lengths with and without a tail shorter than a vector.
        for (count, channels, n, relu) in [
            (27, 24, 112, true),
            (27, 4, 37, false),
            (9, 11, 16, true),
            (36, 13, 57, false),
            (18, 1, 7, true),
        ] {
            let data: Vec<Vec<f32>> = (0..count)
                .map(|_| (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect())
                .collect();
            let taps: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let weights: Vec<f32> = (0..count * channels).map(|_| rng.f32() - 0.5).collect();
            let bias: Vec<f32> = (0..channels).map(|_| rng.f32() - 0.5).collect();
            // Written into the middle of longer planes, as the kernel does with its rows.
            let (offset, plane) = (3, n + 5);
            let expected = dense_row_by_definition(&taps, &weights, &bias, relu);
            let mut dispatched = vec![f32::NAN; channels * plane];
            let row = DenseRow {
                taps: &taps,
                weights: &weights,
                bias: &bias,
                relu,
                plane,
            };
            row.run(&mut dispatched, offset);
            for co in 0..channels {
                for x in 0..n {
                    let got = dispatched[co * plane + offset + x];
                    let want = expected[co * n + x];
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "{count} taps, channel {co}, x {x}: {got} vs {want}"
                    );
                }
            }
            // The AVX2 path, also on CPUs whose dispatch picks AVX-512: the positions both
            // vector paths cover must be the same bits (same order of fused multiply-adds).
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                let mut avx2 = vec![f32::NAN; channels * plane];
                // SAFETY: the CPU has AVX2 and FMA.
                let done = unsafe { avx2::dense_row(&row, &mut avx2, offset) };
                assert_eq!(done, n / 8 * 8);
                let both = if std::is_x86_feature_detected!("avx512f") {
                    n / LANES * LANES
                } else {
                    done
                };
                for co in 0..channels {
                    let range = co * plane + offset..co * plane + offset + both;
                    assert_eq!(
                        avx2[range.clone()],
                        dispatched[range],
                        "{count} taps, channel {co}"
                    );
                }
            }
        }
    }

    #[test]
    fn primitives_use_the_prefix_of_longer_inputs() {
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![1.0; 9];
        multiply_add_3(&mut out, [&a, &a[1..], &a[3..]], [1.0, 2.0, -1.0]);
        let expected: Vec<f32> = (0..9)
            .map(|x| 1.0 + x as f32 + 2.0 * (x + 1) as f32 - (x + 3) as f32)
            .collect();
        assert_eq!(out, expected);

        let mut out = vec![4.0; 9];
        let b: Vec<f32> = (0..12).map(|v| (v as f32 - 6.0).abs()).collect();
        max_3(&mut out, [&b, &b[1..], &b[2..]]);
        let expected: Vec<f32> = (0..9)
            .map(|x| {
                [4.0, b[x], b[x + 1], b[x + 2]]
                    .into_iter()
                    .fold(f32::MIN, f32::max)
            })
            .collect();
        assert_eq!(out, expected);

        for len in [0, 1, 6, 7, 33] {
            let source: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let (mut first, mut second) = (vec![-1.0; 17], vec![-1.0; 17]);
            deinterleave(&source, &mut first, &mut second);
            for k in 0..17 {
                assert_eq!(first[k], if 2 * k < len { (2 * k) as f32 } else { -1.0 });
                assert_eq!(
                    second[k],
                    if 2 * k + 1 < len {
                        (2 * k + 1) as f32
                    } else {
                        -1.0
                    }
                );
            }
        }
    }
}
