//! Synchronised BatchNorm (docs/segmenter.md, "Synchronised BatchNorm"): a trainable BatchNorm
//! whose batch statistics span every rank, as PyTorch's `SyncBatchNorm`, so that N ranks train
//! what one process with N× the batch trains and the running statistics stay identical on every
//! rank. The autograd function is C++ (`shim/sync_batch_norm.cpp`: tch has no custom autograd);
//! its three sums over the ranks (two forward, one backward) call back into the job's
//! [`Communicator`]. Every rank must therefore run the same forward and backward passes.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tch::{Device, Tensor};

use super::comm::sum_values;
use super::Communicator;

type SumFn = extern "C" fn(context: *const c_void, values: *mut f64, len: i64, error: *mut c_char, capacity: i64) -> c_int;

extern "C" {
    fn wsss_sync_batch_norm(
        input: *const c_void,
        weight: *const c_void,
        bias: *const c_void,
        running_mean: *const c_void,
        running_var: *const c_void,
        momentum: f64,
        eps: f64,
        sum: SumFn,
        context: *const c_void,
        output: *mut *mut c_void,
    ) -> *mut c_char;
    fn wsss_free_message(message: *mut c_char);
}

/// The ranks a synchronised BatchNorm reduces over, and the device its sums travel on.
pub struct StatsSync {
    comm: Arc<dyn Communicator>,
    device: Device,
}

// SAFETY: the communicator is used by one thread at a time: the training step's, or during a
// CUDA backward pass libtorch's device thread while the step's thread waits in `backward()`.
// (tch's `Module` needs `Send`; nothing here moves the model across threads while it trains.)
unsafe impl Send for StatsSync {}
unsafe impl Sync for StatsSync {}

impl std::fmt::Debug for StatsSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatsSync({} ranks over {}, {:?})", self.comm.size(), self.comm.backend(), self.device)
    }
}

/// The running statistics and affine parameters of one BatchNorm.
pub struct BatchNormState<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub momentum: f64,
    pub eps: f64,
}

impl StatsSync {
    pub fn new(comm: Arc<dyn Communicator>, device: Device) -> StatsSync {
        StatsSync { comm, device }
    }

    /// The training-mode BatchNorm of `input` [N, C, …] with statistics over every rank's
    /// input; updates the running statistics in place.
    pub fn batch_norm(&self, input: &Tensor, state: &BatchNormState) -> Result<Tensor, String> {
        let mut output: *mut c_void = std::ptr::null_mut();
        let ptr = |t: &Tensor| t.as_ptr() as *const c_void;
        // SAFETY: the tensor pointers are tch's `at::Tensor*` handles, alive for the call; the
        // context is `self`, alive while any graph holding it can be backpropagated (the model
        // owns it); the C++ side returns either a new tensor or an owned message.
        unsafe {
            let message = wsss_sync_batch_norm(
                ptr(input),
                ptr(state.weight),
                ptr(state.bias),
                ptr(state.running_mean),
                ptr(state.running_var),
                state.momentum,
                state.eps,
                sum_over_ranks,
                self as *const StatsSync as *const c_void,
                &mut output,
            );
            if !message.is_null() {
                let text = CStr::from_ptr(message).to_string_lossy().into_owned();
                wsss_free_message(message);
                return Err(text);
            }
            Ok(Tensor::from_ptr(output as *mut torch_sys::C_tensor))
        }
    }
}

/// The C++ function's callback: `values` summed over the ranks, in place. Returns 0, or 1 with
/// the reason in `error`.
extern "C" fn sum_over_ranks(context: *const c_void, values: *mut f64, len: i64, error: *mut c_char, capacity: i64) -> c_int {
    // SAFETY: `context` is the `StatsSync` that started the forward pass, `values` the C++
    // side's buffer of `len` doubles.
    let (sync, values) = unsafe { (&*(context as *const StatsSync), std::slice::from_raw_parts_mut(values, len as usize)) };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| sum_values(sync.comm.as_ref(), values, sync.device)));
    let message = match outcome {
        Ok(Ok(sums)) => {
            values.copy_from_slice(&sums);
            return 0;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the sum over the ranks panicked".to_string(),
    };
    write_c_message(&message, error, capacity);
    1
}

/// `message` into a C caller's buffer `error` of `capacity` bytes, cut to fit, NUL-terminated.
pub(crate) fn write_c_message(message: &str, error: *mut c_char, capacity: i64) {
    let bytes = message.as_bytes();
    let n = bytes.len().min(capacity.max(1) as usize - 1);
    // SAFETY: `error` holds `capacity` bytes; n + 1 ≤ capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, error, n);
        *error.add(n) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::comm::LocalComm;
    use tch::{Kind, Tensor};

    fn state<'a>(weight: &'a Tensor, bias: &'a Tensor, mean: &'a Tensor, var: &'a Tensor) -> BatchNormState<'a> {
        BatchNormState { weight, bias, running_mean: mean, running_var: var, momentum: 0.1, eps: 1e-5 }
    }

    /// On one rank it is PyTorch's training-mode BatchNorm: output, input/weight/bias
    /// gradients and running statistics.
    #[test]
    fn one_rank_equals_libtorch_batch_norm() {
        tch::manual_seed(0);
        let sync = StatsSync::new(Arc::new(LocalComm), Device::Cpu);
        let input = Tensor::randn([3, 4, 5, 6], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
        let upstream = Tensor::randn([3, 4, 5, 6], (Kind::Float, Device::Cpu));
        let (weight, bias) = (Tensor::from_slice(&[1.0f32, 2.0, 0.5, -1.0]), Tensor::from_slice(&[0.0f32, 1.0, -1.0, 0.5]));
        let synced = run(&input, &upstream, &weight, &bias, |x, s| sync.batch_norm(x, s).unwrap());
        let native = run(&input, &upstream, &weight, &bias, |x, s| {
            x.batch_norm(Some(s.weight), Some(s.bias), Some(s.running_mean), Some(s.running_var), true, s.momentum, s.eps, true)
        });
        for (i, (a, b)) in native.iter().zip(&synced).enumerate() {
            assert!(a.allclose(b, 1e-4, 1e-4, false), "output {i}: max |difference| {}", (a - b).abs().max().double_value(&[]));
        }
    }

    /// `batch_norm` of `input` (fresh affine parameters, running statistics 0/1, momentum 0.1,
    /// eps 1e-5) backpropagated from `upstream`: output, input, weight and bias gradients,
    /// running mean and variance.
    fn run(input: &Tensor, upstream: &Tensor, weight: &Tensor, bias: &Tensor, batch_norm: impl Fn(&Tensor, &BatchNormState) -> Tensor) -> [Tensor; 6] {
        let x = input.copy().set_requires_grad(true);
        let (w, b) = (weight.copy().set_requires_grad(true), bias.copy().set_requires_grad(true));
        let channels = input.size()[1];
        let (mean, var) = (Tensor::zeros([channels], (Kind::Float, Device::Cpu)), Tensor::ones([channels], (Kind::Float, Device::Cpu)));
        let y = batch_norm(&x, &state(&w, &b, &mean, &var));
        (&y * upstream).sum(Kind::Float).backward();
        [y.detach(), x.grad(), w.grad(), b.grad(), mean, var]
    }

    /// A channel with one value (a pooled batch of one) is normalised with the running
    /// statistics, which stay as they were.
    #[test]
    fn a_single_value_per_channel_uses_the_running_statistics() {
        let sync = StatsSync::new(Arc::new(LocalComm), Device::Cpu);
        let x = Tensor::from_slice(&[5.0f32, 1.0]).view([1, 2, 1, 1]).set_requires_grad(true);
        let (w, b) = (Tensor::from_slice(&[2.0f32, 0.5]), Tensor::from_slice(&[1.0f32, -1.0]));
        let (mean, var) = (Tensor::from_slice(&[3.0f32, 0.0]), Tensor::from_slice(&[4.0f32, 0.25]));
        let y = sync.batch_norm(&x, &state(&w, &b, &mean, &var)).unwrap();
        // (5−3)/2·2+1 = 3; (1−0)/0.5·0.5−1 = 0 (eps aside).
        assert!(y.flatten(0, -1).allclose(&Tensor::from_slice(&[3.0f32, 0.0]), 1e-4, 1e-4, false), "{y}");
        y.sum(Kind::Float).backward();
        // dy/dx = weight/sqrt(var + eps): 1 and 1.
        assert!(x.grad().flatten(0, -1).allclose(&Tensor::from_slice(&[1.0f32, 1.0]), 1e-4, 1e-4, false));
        assert_eq!(Vec::<f32>::try_from(&mean).unwrap(), [3.0, 0.0]);
        assert_eq!(Vec::<f32>::try_from(&var).unwrap(), [4.0, 0.25]);
    }

    /// Two ranks (threads) with half the batch each: outputs, input gradients and running
    /// statistics of the whole batch, and weight/bias gradients that sum to the whole batch's.
    #[test]
    fn two_ranks_equal_one_batch_norm_over_both_halves() {
        tch::manual_seed(1);
        let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let upstream = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu));
        let weight = Tensor::from_slice(&[1.5f32, -0.5, 2.0]);
        let bias = Tensor::from_slice(&[0.1f32, 0.2, -0.3]);
        let local = StatsSync::new(Arc::new(LocalComm), Device::Cpu);
        let whole = run(&x, &upstream, &weight, &bias, |x, s| local.batch_norm(x, s).unwrap());
        let shared = Arc::new(ThreadSums::new(2));
        let halves: Vec<[Tensor; 6]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let (x, upstream, shared) = (x.narrow(0, 2 * rank, 2).copy(), upstream.narrow(0, 2 * rank, 2).copy(), shared.clone());
                    let (weight, bias) = (weight.copy(), bias.copy());
                    scope.spawn(move || {
                        let sync = StatsSync::new(Arc::new(ThreadRank { rank: rank as usize, shared }), Device::Cpu);
                        run(&x, &upstream, &weight, &bias, |x, s| sync.batch_norm(x, s).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            assert!(a.allclose(b, 1e-5, 1e-5, false), "{what}: max |difference| {}", (a - b).abs().max().double_value(&[]))
        };
        for (i, what) in [(0, "output"), (1, "input gradient")] {
            close(&whole[i], &Tensor::cat(&[&halves[0][i], &halves[1][i]], 0), what);
        }
        for (i, what) in [(2, "weight gradient"), (3, "bias gradient")] {
            close(&whole[i], &(&halves[0][i] + &halves[1][i]), what);
        }
        for (i, what) in [(4, "running mean"), (5, "running variance")] {
            close(&whole[i], &halves[0][i], what);
            close(&whole[i], &halves[1][i], what);
        }
    }

    /// Sums over threads standing in for ranks: each adds its values, all wait, each reads.
    struct ThreadSums {
        slots: std::sync::Mutex<Vec<Vec<f64>>>,
        barrier: std::sync::Barrier,
    }

    impl ThreadSums {
        fn new(ranks: usize) -> ThreadSums {
            ThreadSums { slots: std::sync::Mutex::new(vec![Vec::new(); ranks]), barrier: std::sync::Barrier::new(ranks) }
        }

        fn ranks(&self) -> usize {
            self.slots.lock().unwrap().len()
        }
    }

    struct ThreadRank {
        rank: usize,
        shared: Arc<ThreadSums>,
    }

    impl Communicator for ThreadRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.shared.ranks()
        }
        fn backend(&self) -> &'static str {
            "threads"
        }
        fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), crate::dist::CommError> {
            self.shared.slots.lock().unwrap()[self.rank] = Vec::<f64>::try_from(&*tensor).unwrap();
            self.shared.barrier.wait();
            let slots = self.shared.slots.lock().unwrap().clone();
            self.shared.barrier.wait();
            let sums: Vec<f64> = (0..slots[0].len()).map(|i| slots.iter().map(|s| s[i]).sum()).collect();
            tensor.copy_(&Tensor::from_slice(&sums));
            Ok(())
        }
        fn broadcast(&self, _tensor: &mut Tensor, _root: usize) -> Result<(), crate::dist::CommError> {
            Err(crate::dist::CommError::Config("the test's thread ranks only sum".into()))
        }
        fn all_gather(&self, _tensor: &Tensor) -> Result<Tensor, crate::dist::CommError> {
            Err(crate::dist::CommError::Config("the test's thread ranks only sum".into()))
        }
        fn barrier(&self) -> Result<(), crate::dist::CommError> {
            self.shared.barrier.wait();
            Ok(())
        }
    }
}
