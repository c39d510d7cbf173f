//! One channel plane, copied with a border so that a 3×3 window is nine straight slices.
//!
//! Both of our kernels (depthwise convolution and max-pool) read a 3×3 window at stride 1 or 2
//! around every output pixel, with one pixel of padding before each axis. Each plane is copied
//! once into a buffer that holds the padding too (0 for a convolution, -inf for a max-pool),
//! laid out so that for every tap `(ky, kx)` of the window, the values that tap reads for the
//! output pixels, in row-major order, sit at a fixed distance from each other. A whole plane
//! is then nine long multiply-adds (or maxima) over contiguous slices, which vectorize well;
//! per-row loops over rows of 7 to 28 pixels were mostly loop overhead.
//!
//! - Stride 1: the bordered plane, row pitch `out_w + 2`. Output pixel `(y, x)` is computed at
//!   flat position `y * pitch + x`, and tap `(ky, kx)` reads position `+ ky * pitch + kx`. The
//!   two positions per row past `out_w` compute values nobody reads.
//! - Stride 2: the bordered plane split into its four polyphase components (even or odd rows
//!   × even or odd columns), each with row pitch `out_w + 1`. Bordered pixel `(2y + ky,
//!   2x + kx)` is in component `(ky % 2, kx % 2)` at row `y + ky / 2`, column `x + kx / 2`, so
//!   again every tap is one fixed offset from `y * pitch + x`.
//!
//! The plane is small (at most 114×114 floats in our models): copying it costs a fraction of
//! the arithmetic it makes vectorizable.

/// Geometry of a 3×3 window with a border of one pixel before each spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Window {
    /// Input height and width.
    pub in_hw: (usize, usize),
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// 1 or 2, the same on both axes.
    pub stride: usize,
}

impl Window {
    /// The output size tract computed must be reachable with a border of one pixel before
    /// each axis, and the stride must be one the plane layout supports.
    pub fn is_supported(&self) -> bool {
        let (h, w) = self.in_hw;
        let (oh, ow) = self.out_hw;
        matches!(self.stride, 1 | 2)
            && h > 0
            && w > 0
            && oh > 0
            && ow > 0
            // The last window starts inside the input or on its far border, never past it.
            && self.stride * (oh - 1) <= h
            && self.stride * (ow - 1) <= w
    }

    /// The output shape for an input of `shape`: NCHW or CHW with this window's input size.
    pub fn output_shape(&self, shape: &[usize]) -> tract_onnx::prelude::TractResult<Vec<usize>> {
        let rank = shape.len();
        tract_onnx::tract_core::internal::ensure!(
            matches!(rank, 3 | 4) && (shape[rank - 2], shape[rank - 1]) == self.in_hw,
            "input shape {shape:?} does not fit {self:?} (NCHW or CHW)"
        );
        let mut out = shape.to_vec();
        (out[rank - 2], out[rank - 1]) = self.out_hw;
        Ok(out)
    }

    /// Distance between output rows in the computation (see the module documentation).
    pub fn pitch(&self) -> usize {
        match self.stride {
            1 => self.out_hw.1 + 2,
            _ => self.out_hw.1 + 1,
        }
    }

    /// Rows of one stored component.
    fn component_rows(&self) -> usize {
        match self.stride {
            1 => self.out_hw.0 + 2,
            _ => self.out_hw.0 + 1,
        }
    }

    /// Values computed per plane, the unread columns included.
    pub fn span(&self) -> usize {
        self.out_hw.0 * self.pitch()
    }

    /// Start of the component holding bordered pixels of row parity `rp`, column parity `cp`.
    fn component(&self, rp: usize, cp: usize) -> usize {
        (2 * rp + cp) * self.component_rows() * self.pitch()
    }

    /// Where the values tap `(ky, kx)` reads start, for each of the nine taps (row-major).
    fn tap_offsets(&self) -> [usize; 9] {
        let pitch = self.pitch();
        std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            match self.stride {
                1 => ky * pitch + kx,
                _ => self.component(ky % 2, kx % 2) + (ky / 2) * pitch + kx / 2,
            }
        })
    }

    /// Length of the buffer: every component, plus the two values the last tap reads past the
    /// last stride-1 row (they only feed unread columns).
    fn buffer_len(&self) -> usize {
        let components = if self.stride == 1 { 1 } else { 4 };
        components * self.component_rows() * self.pitch() + 2
    }
}

/// A reusable bordered copy of one plane (see the module documentation).
#[derive(Debug)]
pub(crate) struct PaddedPlane {
    window: Window,
    taps: [usize; 9],
    data: Vec<f32>,
    /// The bits of the value the border cells hold. Every load writes the same interior
    /// cells, so the border only needs writing when this value changes.
    border_bits: u32,
}

impl PaddedPlane {
    /// A buffer for planes of `window`'s geometry.
    pub fn new(window: Window) -> PaddedPlane {
        PaddedPlane {
            window,
            taps: window.tap_offsets(),
            data: vec![0.0; window.buffer_len()],
            border_bits: 0.0f32.to_bits(),
        }
    }

    /// Copy one input plane (`in_h * in_w` values, row-major) in, with `border` around it.
    pub fn load(&mut self, plane: &[f32], border: f32) {
        let w = self.window;
        let (in_h, in_w) = w.in_hw;
        let pitch = w.pitch();
        if border.to_bits() != self.border_bits {
            self.data.fill(border);
            self.border_bits = border.to_bits();
        }
        // Bordered pixel (r, j) holds input pixel (r - 1, j - 1). Rows and columns past the
        // last one a window reads are not stored.
        let last_row = w.stride * (w.out_hw.0 - 1) + 2;
        let used_cols = in_w.min(w.stride * (w.out_hw.1 - 1) + 2);
        for y in 0..in_h.min(last_row) {
            let source = &plane[y * in_w..y * in_w + used_cols];
            let r = y + 1;
            if w.stride == 1 {
                self.data[r * pitch + 1..r * pitch + 1 + used_cols].copy_from_slice(source);
                continue;
            }
            // Input column 2k is bordered column 2k + 1 (odd component, column k); input
            // column 2k + 1 is bordered column 2k + 2 (even component, column k + 1).
            let row = (r / 2) * pitch;
            let (even_start, odd_start) =
                (w.component(r % 2, 0) + row, w.component(r % 2, 1) + row);
            let (front, back) = self.data.split_at_mut(odd_start);
            let even = &mut front[even_start + 1..even_start + pitch];
            let odd = &mut back[..pitch];
            super::simd::deinterleave(source, odd, even);
        }
    }

    /// For tap `(ky, kx)` (index `3 * ky + kx`), the value it reads for every computed
    /// position: `span()` values.
    pub fn tap(&self, index: usize) -> &[f32] {
        let start = self.taps[index];
        &self.data[start..start + self.window.span()]
    }

    /// Copy the computed values of a plane (`span()` of them) to the output plane, dropping the
    /// unread columns.
    pub fn store(&self, computed: &[f32], out: &mut [f32]) {
        let (pitch, ow) = (self.window.pitch(), self.window.out_hw.1);
        for (row, out_row) in computed.chunks(pitch).zip(out.chunks_exact_mut(ow)) {
            out_row.copy_from_slice(&row[..ow]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tap_reads_the_bordered_pixel_of_its_output() {
        for (in_hw, stride) in [
            ((5, 7), 1),
            ((6, 6), 2),
            ((7, 5), 2),
            ((1, 1), 1),
            ((2, 3), 2),
            ((1, 1), 2),
        ] {
            let out_hw = ((in_hw.0 - 1) / stride + 1, (in_hw.1 - 1) / stride + 1);
            let window = Window {
                in_hw,
                out_hw,
                stride,
            };
            assert!(window.is_supported());
            // One buffer reused for several planes, as the kernels do, with the border
            // changing and staying the same.
            let mut padded = PaddedPlane::new(window);
            for (load, border) in [(0, -5.0), (1, -5.0), (2, 0.0), (3, f32::NEG_INFINITY)] {
                let plane: Vec<f32> = (0..in_hw.0 * in_hw.1)
                    .map(|v| (v * (load + 1)) as f32 + 1.0)
                    .collect();
                padded.load(&plane, border);
                let bordered = |r: usize, j: usize| match (r.checked_sub(1), j.checked_sub(1)) {
                    (Some(y), Some(x)) if y < in_hw.0 && x < in_hw.1 => plane[y * in_hw.1 + x],
                    _ => border,
                };
                for t in 0..9 {
                    let (ky, kx) = (t / 3, t % 3);
                    let tap = padded.tap(t);
                    assert_eq!(tap.len(), window.span());
                    for y in 0..out_hw.0 {
                        for x in 0..out_hw.1 {
                            let expected = bordered(stride * y + ky, stride * x + kx);
                            assert_eq!(
                                tap[y * window.pitch() + x],
                                expected,
                                "{in_hw:?} s{stride} load {load} tap {t} ({y},{x})"
                            );
                        }
                    }
                }
            }
            let computed: Vec<f32> = (0..window.span()).map(|v| v as f32).collect();
            let mut out = vec![0.0; out_hw.0 * out_hw.1];
            padded.store(&computed, &mut out);
            for y in 0..out_hw.0 {
                for x in 0..out_hw.1 {
                    assert_eq!(out[y * out_hw.1 + x], (y * window.pitch() + x) as f32);
                }
            }
        }
    }

    #[test]
    fn refuses_windows_it_cannot_serve() {
        let w = |in_hw, out_hw, stride| {
            Window {
                in_hw,
                out_hw,
                stride,
            }
            .is_supported()
        };
        assert!(w((56, 56), (28, 28), 2));
        assert!(w((112, 112), (56, 56), 2));
        assert!(w((7, 7), (7, 7), 1));
        assert!(!w((7, 7), (7, 7), 3));
        assert!(
            w((7, 7), (8, 7), 1),
            "a window reaching two pixels of border"
        );
        assert!(!w((7, 7), (9, 7), 1), "a window starting past the border");
        assert!(!w((0, 7), (1, 7), 1));
    }
}
