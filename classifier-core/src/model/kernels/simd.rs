//! The primitives of our kernels, run with the CPU's widest vectors.
//!
//! The primitives are plain loops over equal-length slices, which LLVM vectorizes. The crate
//! is compiled for baseline x86-64 (SSE2, 4 floats), so each primitive also exists compiled
//! for AVX-512F (16 floats) and AVX2 (8 floats) and picks the widest the CPU has. Our kernels
//! call them once per tap row of a whole plane (hundreds of values), so the check costs
//! nothing measurable. The arithmetic is the same either way (no fused multiply-add is formed
//! without `mul_add`), so results do not depend on the CPU.

/// Defines a public primitive that runs its body compiled for AVX-512F or AVX2 + FMA when
/// the CPU has them (checked once per call, a cached atomic load), else as compiled.
macro_rules! vectorized {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has every feature `avx512` is compiled with.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature `avx2` is compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

vectorized! {
    /// `out[x] += w[0] * a[0][x] + w[1] * a[1][x] + w[2] * a[2][x]` for every `x` of `out`.
    ///
    /// The `a` slices may be longer than `out`; their first `out.len()` values are used.
    fn multiply_add_3(out: &mut [f32], a: [&[f32]; 3], w: [f32; 3]) {
        let n = out.len();
        let (a0, a1, a2) = (&a[0][..n], &a[1][..n], &a[2][..n]);
        for (((o, &x0), &x1), &x2) in out.iter_mut().zip(a0).zip(a1).zip(a2) {
            *o += w[0] * x0 + w[1] * x1 + w[2] * x2;
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

vectorized! {
    /// `values[x] = max(values[x], floor)` for every `x` (a ReLU when `floor` is 0).
    fn clamp_below(values: &mut [f32], floor: f32) {
        for v in values.iter_mut() {
            *v = if *v > floor { *v } else { floor };
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
