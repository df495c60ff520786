//! Data-parallel gradients. Every trainable parameter's gradient is bound to a slice of a flat
//! bucket of at most `dist.bucket_mb`, so summing the gradients over the ranks is one in-place
//! all-reduce per bucket, with no flatten/unflatten copies (PyTorch DDP's
//! `gradient_as_bucket_view`). Backward accumulates into those slices because a defined
//! gradient is updated in place; `zero_grad` zeroes them in place.

use tch::{Device, Kind, Tensor};

use super::{CommError, Communicator};

/// One flat buffer and the parameters whose gradients are views into it.
struct Bucket {
    flat: Tensor,
    params: Vec<Tensor>,
}

pub struct GradientBuckets {
    buckets: Vec<Bucket>,
}

impl GradientBuckets {
    /// Binds the gradients of `params` to buckets of at most `bucket_bytes` (a larger parameter
    /// gets a bucket of its own), filled in reverse order — the order backward produces them —
    /// and split where the device or kind changes. Existing gradient values are kept.
    pub fn new(params: &[Tensor], bucket_bytes: usize) -> GradientBuckets {
        let mut groups: Vec<Vec<Tensor>> = Vec::new();
        let mut bytes = 0;
        let key = |p: &Tensor| (p.device(), p.kind());
        for param in params.iter().rev() {
            let size = param.numel() * param.kind().elt_size_in_bytes();
            let fits = groups.last().is_some_and(|g| key(&g[0]) == key(param) && bytes + size <= bucket_bytes);
            if !fits {
                groups.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            groups.last_mut().expect("a group was just pushed").push(param.shallow_clone());
        }
        GradientBuckets { buckets: groups.into_iter().map(Bucket::bind).collect() }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Sums the gradients over the ranks, bucket by bucket, in place.
    pub fn all_reduce(&mut self, comm: &dyn Communicator) -> Result<(), CommError> {
        for bucket in &mut self.buckets {
            bucket.check_bound()?;
            comm.all_reduce_sum(&mut bucket.flat)?;
        }
        Ok(())
    }

    /// Multiplies every gradient by `factor`, in place.
    pub fn scale(&mut self, factor: f64) {
        for bucket in &mut self.buckets {
            let _ = bucket.flat.g_mul_scalar_(factor);
        }
    }

    /// Elements over all buckets.
    pub fn numel(&self) -> usize {
        self.buckets.iter().map(|b| b.flat.numel()).sum()
    }
}

impl Bucket {
    fn bind(params: Vec<Tensor>) -> Bucket {
        let (device, kind): (Device, Kind) = (params[0].device(), params[0].kind());
        let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
        let flat = Tensor::zeros([total], (kind, device));
        let mut offset = 0;
        for param in &params {
            let numel = param.numel() as i64;
            let mut slot = flat.narrow(0, offset, numel).view(param.size().as_slice());
            let mut grad = param.grad();
            if !grad.defined() {
                define_grad(param);
                grad = param.grad();
            } else {
                slot.copy_(&grad);
            }
            grad.set_data(&slot);
            offset += numel;
        }
        Bucket { flat, params }
    }

    /// A gradient replaced rather than updated in place (e.g. set to None and re-created)
    /// would silently leave the all-reduce: refuse.
    fn check_bound(&self) -> Result<(), CommError> {
        let start = self.flat.data_ptr() as usize;
        let end = start + self.flat.numel() * self.flat.kind().elt_size_in_bytes();
        for param in &self.params {
            let at = param.grad().data_ptr() as usize;
            if !(start..end).contains(&at) {
                return Err(CommError::Library {
                    call: "gradient all-reduce",
                    message: format!("the gradient of a {:?} parameter is no longer in its bucket", param.size()),
                });
            }
        }
        Ok(())
    }
}

/// Gives `param` a gradient (zero) by a backward pass through `0·Σparam`.
fn define_grad(param: &Tensor) {
    tch::with_grad(|| (param.sum(param.kind()) * 0.0).backward());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::comm::LocalComm;

    #[test]
    fn backward_accumulates_into_the_buckets() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32, 5.0]).view([1, 2]).set_requires_grad(true);
        let c = Tensor::from_slice(&[6.0f32]).set_requires_grad(true);
        // 8-byte buckets: c (4 B) and b (8 B) do not fit together; a (12 B) alone.
        let mut buckets = GradientBuckets::new(&[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()], 8);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets.numel(), 6);
        let loss = (&a * &a).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float) + (&c * &c * &c).sum(Kind::Float);
        loss.backward();
        buckets.all_reduce(&LocalComm).unwrap();
        let flat: Vec<Vec<f32>> = buckets.buckets.iter().map(|b| Vec::<f32>::try_from(&b.flat).unwrap()).collect();
        // Reverse order: c's bucket first; d(c³)/dc = 3c² = 108, d(3b)/db = 3, d(a²)/da = 2a.
        assert_eq!(flat, vec![vec![108.0], vec![3.0, 3.0], vec![2.0, 4.0, 6.0]]);
        let mut c_grad = c.grad();
        let _ = c_grad.zero_();
        assert_eq!(Vec::<f32>::try_from(&buckets.buckets[0].flat).unwrap(), vec![0.0]);
    }

    #[test]
    fn existing_gradients_are_kept_and_replaced_ones_refused() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&a * 5.0).sum(Kind::Float).backward();
        let mut buckets = GradientBuckets::new(&[a.shallow_clone()], 1 << 20);
        assert_eq!(Vec::<f32>::try_from(&buckets.buckets[0].flat).unwrap(), vec![5.0, 5.0]);
        a.grad().set_data(&Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let err = buckets.all_reduce(&LocalComm).unwrap_err().to_string();
        assert!(err.contains("no longer in its bucket"), "{err}");
    }
}
