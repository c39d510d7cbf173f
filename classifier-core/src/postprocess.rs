//! Logits to ranked predictions: softmax, then top-K.

use serde::{Deserialize, Serialize};

use crate::model::Labels;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// ImageNet class id (index of the model output). Unique, unlike names.
    pub class_id: usize,
    /// The class name from the labels file.
    pub class_name: String,
    /// Softmax probability in [0, 1].
    pub confidence: f32,
}

/// Softmax over `logits`, computed in f64 for accuracy (as the reference does).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes of one image, most probable first. Ties keep the lower
/// class id first; NaN logits rank last.
///
/// ```
/// use classifier_core::model::Labels;
/// use classifier_core::postprocess::top_k;
/// let labels = Labels::parse("cat\ndog\nfish", std::path::Path::new("labels.txt")).unwrap();
/// let top = top_k(&[0.5, 3.0, -1.0], &labels, 2);
/// assert_eq!(top[0].class_name, "dog");
/// assert_eq!(top[1].class_id, 0);
/// ```
pub fn top_k(logits: &[f32], labels: &Labels, k: usize) -> Vec<Prediction> {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let key = |i: &usize| {
        if probs[*i].is_nan() {
            f64::NEG_INFINITY
        } else {
            probs[*i]
        }
    };
    let k = k.min(order.len());
    let by_rank = |a: &usize, b: &usize| key(b).total_cmp(&key(a)).then(a.cmp(b));
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, by_rank);
    }
    order.truncate(k);
    order.sort_by(by_rank);
    order
        .into_iter()
        .map(|i| Prediction {
            class_id: i,
            class_name: labels.name(i).unwrap_or("unknown").to_string(),
            confidence: probs[i] as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p[0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn top_k_is_sorted_and_bounded() {
        let labels = Labels::parse("a\nb\nc\nd", std::path::Path::new("l")).unwrap();
        let top = top_k(&[0.1, 0.4, 0.3, 0.2], &labels, 3);
        let ids: Vec<_> = top.iter().map(|p| p.class_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(top_k(&[0.1, 0.4], &labels, 10).len(), 2);
        assert!(top_k(&[0.1, 0.4], &labels, 0).is_empty());
    }
}
