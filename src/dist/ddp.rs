//! Data-parallel gradients. Every trainable parameter's gradient is bound to a slice of a flat
//! bucket of at most `dist.bucket_mb`, so summing the gradients over the ranks is one in-place
//! all-reduce per bucket, with no flatten/unflatten copies (PyTorch DDP's
//! `gradient_as_bucket_view`). Backward accumulates into those slices because a defined
//! gradient is updated in place; `zero_grad` zeroes them in place.
//!
//! Overlapped (`dist.overlap`, docs/architecture.md "Overlapped gradient all-reduce"), a hook on
//! every parameter (shim/grad_ready.cpp) reports its gradient accumulated during the backward
//! pass of a step's last micro-batch; a bucket whose gradients are all in starts its all-reduce
//! then, while backward goes on. Buckets start strictly in index order, on every rank the same
//! order whatever the graph, and those not started during backward (a parameter without a
//! gradient: a frozen branch, an unused head) start in [`GradientBuckets::all_reduce`], which
//! waits for all of them. Every bucket is summed once per step either way.

use std::ffi::{c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};

use super::comm::PendingSum;
use super::{CommError, Communicator};

/// One flat buffer and the parameters whose gradients are views into it.
struct Bucket {
    flat: Tensor,
    params: Vec<Tensor>,
}

pub struct GradientBuckets {
    buckets: Vec<Bucket>,
    comm: Arc<dyn Communicator>,
    /// The hooks' shared state when overlapped; boxed, the hooks hold its address.
    launcher: Option<Box<Launcher>>,
}

impl GradientBuckets {
    /// Binds the gradients of `params` to buckets of at most `bucket_bytes` (a larger parameter
    /// gets a bucket of its own), filled in reverse order — the order backward produces them —
    /// and split where the device or kind changes. Existing gradient values are kept. The sums
    /// go over `comm`, after backward.
    pub fn new(params: &[Tensor], bucket_bytes: usize, comm: Arc<dyn Communicator>) -> GradientBuckets {
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
        GradientBuckets { buckets: groups.into_iter().map(Bucket::bind).collect(), comm, launcher: None }
    }

    /// As [`GradientBuckets::new`], the sums overlapped with backward: `comm` should be this
    /// job's own communicator (no other collective may interleave with the buckets' on it).
    pub fn overlapped(params: &[Tensor], bucket_bytes: usize, comm: Arc<dyn Communicator>) -> Result<GradientBuckets, CommError> {
        let mut buckets = GradientBuckets::new(params, bucket_bytes, comm.clone());
        let launcher = Box::new(Launcher::new(&buckets.buckets, comm));
        let context = &*launcher as *const Launcher as *const c_void;
        buckets.launcher = Some(launcher);
        for (index, param) in buckets.params().enumerate() {
            set_ready_hook(param, Some(gradient_ready), context, index)?;
        }
        Ok(buckets)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn overlaps(&self) -> bool {
        self.launcher.is_some()
    }

    /// Overlapped: the next backward pass is the step's last, whose gradients start the
    /// buckets' sums as they come in. A no-op otherwise.
    pub fn arm(&self) {
        if let Some(launcher) = &self.launcher {
            launcher.arm();
        }
    }

    /// Sums the gradients over the ranks, bucket by bucket, in place: overlapped, starts the
    /// buckets backward did not, then waits for every one.
    pub fn all_reduce(&mut self) -> Result<(), CommError> {
        for bucket in &self.buckets {
            bucket.check_bound()?;
        }
        match &self.launcher {
            Some(launcher) => launcher.finish(),
            None => self.buckets.iter_mut().try_for_each(|bucket| self.comm.all_reduce_sum(&mut bucket.flat)),
        }
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

    /// Every bound parameter, bucket by bucket (the hooks' indices).
    fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.buckets.iter().flat_map(|b| &b.params)
    }
}

impl Drop for GradientBuckets {
    /// The hooks point at the launcher: they go first.
    fn drop(&mut self) {
        if self.launcher.is_some() {
            for param in self.params() {
                let _ = set_ready_hook(param, None, std::ptr::null(), 0);
            }
        }
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

/// What the readiness hooks share: the buckets' buffers, which bucket each hooked parameter
/// is in, and the step's progress.
struct Launcher {
    comm: Arc<dyn Communicator>,
    flats: Vec<Tensor>,
    bucket_of: Vec<usize>,
    sizes: Vec<usize>,
    state: Mutex<LaunchState>,
}

#[derive(Default)]
struct LaunchState {
    /// Set by `arm` for one backward pass: only then do hooks count.
    armed: bool,
    /// Per bucket, the gradients not yet in.
    missing: Vec<usize>,
    /// Buckets started this step: 0..started.
    started: usize,
    in_flight: Vec<PendingSum>,
}

impl Launcher {
    fn new(buckets: &[Bucket], comm: Arc<dyn Communicator>) -> Launcher {
        let bucket_of = buckets.iter().enumerate().flat_map(|(b, bucket)| std::iter::repeat_n(b, bucket.params.len())).collect();
        Launcher {
            comm,
            flats: buckets.iter().map(|b| b.flat.shallow_clone()).collect(),
            bucket_of,
            sizes: buckets.iter().map(|b| b.params.len()).collect(),
            state: Mutex::new(LaunchState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaunchState> {
        // A panic while the lock was held can only have come from this file's own arithmetic;
        // the state is rebuilt by the next `arm` anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn arm(&self) {
        let mut state = self.lock();
        state.armed = true;
        state.missing = self.sizes.clone();
    }

    /// Parameter `index`'s gradient is in: start every bucket, in order, that is now complete.
    fn ready(&self, index: usize) -> Result<(), CommError> {
        let mut state = self.lock();
        if !state.armed {
            return Ok(());
        }
        let bucket = self.bucket_of[index];
        if state.missing[bucket] == 0 {
            return Err(CommError::Library {
                call: "gradient all-reduce",
                message: format!("a gradient of bucket {bucket} came in twice in one backward pass (its sum may have started after the first)"),
            });
        }
        state.missing[bucket] -= 1;
        while state.started < self.flats.len() && state.missing[state.started] == 0 {
            self.start(&mut state)?;
        }
        for pending in &mut state.in_flight {
            pending.progress()?;
        }
        Ok(())
    }

    fn start(&self, state: &mut LaunchState) -> Result<(), CommError> {
        let pending = self.comm.start_all_reduce_sum(&self.flats[state.started])?;
        state.in_flight.push(pending);
        state.started += 1;
        Ok(())
    }

    /// Starts the buckets backward did not, waits for all, and disarms.
    fn finish(&self) -> Result<(), CommError> {
        let mut state = self.lock();
        state.armed = false;
        while state.started < self.flats.len() {
            self.start(&mut state)?;
        }
        state.started = 0;
        std::mem::take(&mut state.in_flight).iter_mut().try_for_each(PendingSum::wait)
    }
}

type ReadyFn = extern "C" fn(context: *const c_void, index: i64, error: *mut c_char, capacity: i64) -> c_int;

extern "C" {
    fn wsss_set_grad_ready_hook(param: *const c_void, ready: Option<ReadyFn>, context: *const c_void, index: i64, error: *mut c_char, capacity: i64) -> c_int;
}

/// Sets (`ready` given) or removes the readiness hook of `param`.
fn set_ready_hook(param: &Tensor, ready: Option<ReadyFn>, context: *const c_void, index: usize) -> Result<(), CommError> {
    let mut error = [0 as c_char; 512];
    // SAFETY: `param` is tch's `at::Tensor*` handle, alive for the call; `context` outlives the
    // hook (the buckets remove their hooks before the launcher goes); `error` holds 512 bytes.
    let code = unsafe { wsss_set_grad_ready_hook(param.as_ptr() as *const c_void, ready, context, index as i64, error.as_mut_ptr(), error.len() as i64) };
    if code == 0 {
        return Ok(());
    }
    // SAFETY: the C++ side wrote a NUL-terminated message into `error`.
    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
    Err(CommError::Library { call: "setting a gradient readiness hook", message })
}

/// The hooks' callback (shim/grad_ready.cpp): 0, or 1 with the reason in `error`.
extern "C" fn gradient_ready(context: *const c_void, index: i64, error: *mut c_char, capacity: i64) -> c_int {
    // SAFETY: `context` is the launcher the hook was set with, alive while the hook is.
    let launcher = unsafe { &*(context as *const Launcher) };
    let message = match std::panic::catch_unwind(AssertUnwindSafe(|| launcher.ready(index as usize))) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the readiness hook panicked".to_string(),
    };
    super::sync_bn::write_c_message(&message, error, capacity);
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::comm::LocalComm;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t).unwrap()
    }

    #[test]
    fn backward_accumulates_into_the_buckets() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32, 5.0]).view([1, 2]).set_requires_grad(true);
        let c = Tensor::from_slice(&[6.0f32]).set_requires_grad(true);
        // 8-byte buckets: c (4 B) and b (8 B) do not fit together; a (12 B) alone.
        let mut buckets = GradientBuckets::new(&[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()], 8, Arc::new(LocalComm));
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets.numel(), 6);
        let loss = (&a * &a).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float) + (&c * &c * &c).sum(Kind::Float);
        loss.backward();
        buckets.all_reduce().unwrap();
        let flat: Vec<Vec<f32>> = buckets.buckets.iter().map(|b| values(&b.flat)).collect();
        // Reverse order: c's bucket first; d(c³)/dc = 3c² = 108, d(3b)/db = 3, d(a²)/da = 2a.
        assert_eq!(flat, vec![vec![108.0], vec![3.0, 3.0], vec![2.0, 4.0, 6.0]]);
        let mut c_grad = c.grad();
        let _ = c_grad.zero_();
        assert_eq!(values(&buckets.buckets[0].flat), vec![0.0]);
    }

    #[test]
    fn existing_gradients_are_kept_and_replaced_ones_refused() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&a * 5.0).sum(Kind::Float).backward();
        let mut buckets = GradientBuckets::new(&[a.shallow_clone()], 1 << 20, Arc::new(LocalComm));
        assert_eq!(values(&buckets.buckets[0].flat), vec![5.0, 5.0]);
        a.grad().set_data(&Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let err = buckets.all_reduce().unwrap_err().to_string();
        assert!(err.contains("no longer in its bucket"), "{err}");
    }

    /// A world of one that records, for every all-reduce started, the bucket's values then.
    #[derive(Default)]
    struct Recorder {
        started: Mutex<Vec<Vec<f32>>>,
    }

    impl Communicator for Recorder {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            1
        }
        fn backend(&self) -> &'static str {
            "recorder"
        }
        fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), CommError> {
            self.started.lock().unwrap().push(values(tensor));
            Ok(())
        }
        fn broadcast(&self, _tensor: &mut Tensor, _root: usize) -> Result<(), CommError> {
            Ok(())
        }
        fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, CommError> {
            Ok(tensor.unsqueeze(0))
        }
        fn barrier(&self) -> Result<(), CommError> {
            Ok(())
        }
    }

    /// a, b, c in three buckets (c's first); the recorder's log of what started.
    fn three_buckets() -> ([Tensor; 3], GradientBuckets, Arc<Recorder>) {
        let params = [1.0f32, 2.0, 3.0].map(|v| Tensor::from_slice(&[v, v]).set_requires_grad(true));
        let recorder = Arc::new(Recorder::default());
        let buckets = GradientBuckets::overlapped(&params, 8, recorder.clone()).unwrap();
        (params, buckets, recorder)
    }

    fn started(recorder: &Recorder) -> Vec<Vec<f32>> {
        recorder.started.lock().unwrap().clone()
    }

    /// Armed, each bucket starts during backward once its gradient is in, in index order, with
    /// its final values; `all_reduce` then starts nothing more.
    #[test]
    fn armed_buckets_start_during_backward_with_their_final_gradients() {
        let ([a, b, c], mut buckets, recorder) = three_buckets();
        buckets.arm();
        ((&a * 2.0).sum(Kind::Float) + (&b * &b).sum(Kind::Float) + (&c * 5.0).sum(Kind::Float)).backward();
        // d(5c)/dc = 5, d(b²)/db = 2b = 4, d(2a)/da = 2.
        assert_eq!(started(&recorder), vec![vec![5.0, 5.0], vec![4.0, 4.0], vec![2.0, 2.0]]);
        buckets.all_reduce().unwrap();
        assert_eq!(started(&recorder).len(), 3);
    }

    /// Not armed (an accumulation micro-batch), nothing starts during backward; a parameter
    /// without a gradient holds its bucket and every later one back until `all_reduce`, which
    /// starts them in order; every bucket is summed once per step.
    #[test]
    fn unarmed_passes_and_unused_parameters_start_nothing_early() {
        let ([a, b, c], mut buckets, recorder) = three_buckets();
        (&a * 1.0).sum(Kind::Float).backward();
        assert!(started(&recorder).is_empty());
        buckets.arm();
        // b unused: c's bucket starts, b's and a's (though a's gradient is in) wait.
        ((&a * 2.0).sum(Kind::Float) + (&c * 5.0).sum(Kind::Float)).backward();
        assert_eq!(started(&recorder), vec![vec![5.0, 5.0]]);
        buckets.all_reduce().unwrap();
        assert_eq!(started(&recorder), vec![vec![5.0, 5.0], vec![0.0, 0.0], vec![3.0, 3.0]]);
        // The next step arms afresh.
        buckets.arm();
        ((&a + &b + &c).sum(Kind::Float)).backward();
        assert_eq!(started(&recorder).len(), 6);
        buckets.all_reduce().unwrap();
        assert_eq!(started(&recorder).len(), 6);
    }

    /// A second backward pass in one armed step would change a bucket already being summed: an
    /// error from backward, not a wrong sum. Dropped buckets leave no hook behind.
    #[test]
    fn a_gradient_after_its_sum_started_fails_backward_and_hooks_go_with_the_buckets() {
        let ([a, b, c], buckets, _recorder) = three_buckets();
        buckets.arm();
        (&a + &b + &c).sum(Kind::Float).backward();
        let err = (&c * 1.0).sum(Kind::Float).f_backward().unwrap_err().to_string();
        assert!(err.contains("came in twice in one backward pass"), "{err}");
        drop(buckets);
        (&a + &b + &c).sum(Kind::Float).backward();
        assert_eq!(values(&c.grad()), vec![3.0, 3.0]);
    }
}
