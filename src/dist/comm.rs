//! Collective operations over the ranks of a job, behind one [`Communicator`] trait:
//! - [`LocalComm`]: a world of one (every operation is the identity);
//! - [`MpiComm`]: CPU tensors through MPI, reduced in place (`MPI_IN_PLACE`);
//! - [`NcclComm`]: CUDA tensors through NCCL on libtorch's stream (started sums on one of their
//!   own), libnccl loaded at run time (cudarc), its unique id broadcast over MPI.
//!
//! Tensors must be contiguous, of kind f32, f64, i64 or u8 (NCCL also takes f16 and bf16), and on
//! the backend's device.

use std::ffi::c_void;
use std::sync::Arc;

use mpi::collective::CommunicatorCollectives;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::World;

/// `dist.backend`: which library moves the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// NCCL for a CUDA device, MPI otherwise.
    #[default]
    Auto,
    Mpi,
    Nccl,
}

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("{backend} cannot {operation} a {what} tensor: {expected}")]
    Unsupported { backend: &'static str, operation: &'static str, what: String, expected: &'static str },
    #[error("config key `dist.backend`: {0}")]
    Config(String),
    #[error("the NCCL backend cannot start: {0}")]
    NcclUnavailable(String),
    #[error("{call} failed: {message}")]
    Library { call: &'static str, message: String },
}

/// The collectives the training loop and the evaluation use.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// "local", "mpi" or "nccl".
    fn backend(&self) -> &'static str;
    /// Element-wise sum over the ranks, in place.
    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), CommError>;
    /// Starts [`Communicator::all_reduce_sum`] of `tensor`, which must stay alive and untouched
    /// until [`PendingSum::wait`] returns. MPI returns at once (`MPI_Iallreduce`), NCCL once
    /// the sum is queued on its communication stream; the default sums here.
    fn start_all_reduce_sum(&self, tensor: &Tensor) -> Result<PendingSum, CommError> {
        self.all_reduce_sum(&mut tensor.shallow_clone())?;
        Ok(PendingSum::default())
    }
    /// Overwrites `tensor` on every rank with `root`'s.
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError>;
    /// Every rank's `tensor` (same shape everywhere), stacked: `[size, ...shape]`. For small values.
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, CommError>;
    fn barrier(&self) -> Result<(), CommError>;

    /// Element-wise mean over the ranks, in place (floating-point tensors).
    fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), CommError> {
        if !tensor.is_floating_point() {
            return Err(CommError::Unsupported {
                backend: self.backend(),
                operation: "average",
                what: format!("{:?}", tensor.kind()),
                expected: "a floating-point kind",
            });
        }
        self.all_reduce_sum(tensor)?;
        if self.size() > 1 {
            let _ = tensor.g_div_scalar_(self.size() as f64);
        }
        Ok(())
    }
}

/// A started sum over the ranks: MPI's requests, or the event that marks the end of NCCL's
/// sum on its communication stream (none when it finished as it started).
#[derive(Debug, Default)]
pub struct PendingSum(Pending);

#[derive(Debug, Default)]
enum Pending {
    #[default]
    Done,
    Mpi(Vec<ffi::MPI_Request>),
    Stream {
        done: cudarc::driver::CudaEvent,
        compute: Arc<cudarc::driver::CudaStream>,
    },
}

// SAFETY: the MPI requests are handles the MPI library owns; MPI is initialised
// MPI_THREAD_SERIALIZED, and their owner (the gradient buckets' launcher, behind a mutex) uses
// them from one thread at a time. The CUDA handles are usable from any thread.
unsafe impl Send for PendingSum {}

impl PendingSum {
    /// Lets MPI advance the sum (Open MPI progresses non-blocking collectives only inside MPI
    /// calls); whether it has finished.
    pub fn progress(&mut self) -> Result<bool, CommError> {
        match &mut self.0 {
            Pending::Done => Ok(true),
            Pending::Mpi(requests) => {
                let mut done = 0;
                // SAFETY: `requests` are live requests of this process (finished ones are set
                // to MPI_REQUEST_NULL by MPI, which Testall accepts).
                let code = unsafe { ffi::MPI_Testall(requests.len() as i32, requests.as_mut_ptr(), &mut done, ffi::RSMPI_STATUSES_IGNORE) };
                mpi_status("MPI_Testall", code)?;
                if done != 0 {
                    self.0 = Pending::Done;
                }
                Ok(done != 0)
            }
            Pending::Stream { done, .. } => done.try_is_complete().map_err(cuda_error("cuEventQuery")),
        }
    }

    /// MPI: blocks until the sum is in the tensor. NCCL: makes the compute stream wait for it
    /// (the host goes on; whatever the compute stream runs next sees the sum).
    pub fn wait(&mut self) -> Result<(), CommError> {
        match std::mem::take(&mut self.0) {
            Pending::Done => Ok(()),
            Pending::Mpi(mut requests) => {
                // SAFETY: as in `progress`.
                let code = unsafe { ffi::MPI_Waitall(requests.len() as i32, requests.as_mut_ptr(), ffi::RSMPI_STATUSES_IGNORE) };
                mpi_status("MPI_Waitall", code)
            }
            Pending::Stream { done, compute } => compute.wait(&done).map_err(cuda_error("cuStreamWaitEvent")),
        }
    }
}

fn cuda_error(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CommError {
    move |e| CommError::Library { call, message: format!("{e:?}") }
}

fn mpi_status(call: &'static str, code: i32) -> Result<(), CommError> {
    if code == ffi::MPI_SUCCESS as i32 {
        Ok(())
    } else {
        Err(CommError::Library { call, message: format!("MPI error code {code}") })
    }
}

/// Sums a few f64 values over the ranks (counts, loss sums): one small all-reduce on `device`.
pub fn sum_values(comm: &dyn Communicator, values: &[f64], device: Device) -> Result<Vec<f64>, CommError> {
    let mut tensor = Tensor::from_slice(values).to_device(device);
    comm.all_reduce_sum(&mut tensor)?;
    Ok(Vec::<f64>::try_from(tensor.to_device(Device::Cpu)).expect("an f64 tensor converts"))
}

/// Every rank's `text`, in rank order (file lists, JSON of small results): the lengths are
/// gathered first, then the bytes padded to the longest.
pub fn all_gather_text(comm: &dyn Communicator, text: &str, device: Device) -> Result<Vec<String>, CommError> {
    let lengths = comm.all_gather(&Tensor::from_slice(&[text.len() as i64]).to_device(device))?;
    let lengths = Vec::<i64>::try_from(lengths.to_device(Device::Cpu).flatten(0, -1)).expect("an i64 tensor converts");
    let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
    let mut padded = text.as_bytes().to_vec();
    padded.resize(longest.max(1), 0);
    let gathered = comm.all_gather(&Tensor::from_slice(&padded).to_device(device))?.to_device(Device::Cpu);
    let bytes = Vec::<u8>::try_from(gathered.flatten(0, -1)).expect("a u8 tensor converts");
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(rank, &len)| String::from_utf8_lossy(&bytes[rank * padded.len()..rank * padded.len() + len as usize]).into_owned())
        .collect())
}

/// The communicator for `backend` on `device`: a world of one needs no library unless NCCL is
/// asked for (so a single GPU still runs the NCCL path).
pub fn connect(world: &World, backend: Backend, device: Device) -> Result<Box<dyn Communicator>, CommError> {
    let backend = match backend {
        Backend::Auto if device.is_cuda() => Backend::Nccl,
        Backend::Auto => Backend::Mpi,
        chosen => chosen,
    };
    match (backend, device) {
        (Backend::Nccl, Device::Cuda(index)) => Ok(Box::new(NcclComm::new(world, index)?)),
        (Backend::Nccl, _) => Err(CommError::Config(format!("\"nccl\" moves CUDA tensors, but this rank computes on {device:?} (run.device)"))),
        (_, Device::Cuda(_)) => Err(CommError::Config("\"mpi\" moves CPU tensors; a CUDA run needs \"nccl\" or \"auto\"".into())),
        _ => match world.mpi_communicator() {
            Some(comm) => Ok(Box::new(MpiComm { comm: comm.duplicate() })),
            None => Ok(Box::new(LocalComm)),
        },
    }
}

/// Checks that `tensor` can be handed to a library as raw memory.
fn check(tensor: &Tensor, backend: &'static str, operation: &'static str, device_ok: bool, kinds: &[Kind]) -> Result<(), CommError> {
    let what = || format!("{:?} {:?} {:?}", tensor.kind(), tensor.device(), tensor.size());
    if !device_ok {
        return Err(CommError::Unsupported {
            backend,
            operation,
            what: what(),
            expected: if backend == "nccl" { "NCCL takes CUDA tensors" } else { "MPI takes CPU tensors" },
        });
    }
    if !kinds.contains(&tensor.kind()) {
        return Err(CommError::Unsupported { backend, operation, what: what(), expected: "the kinds are f32, f64, i64 and u8 (NCCL also f16 and bf16)" });
    }
    if !tensor.is_contiguous() {
        return Err(CommError::Unsupported { backend, operation, what: what(), expected: "the tensor must be contiguous" });
    }
    Ok(())
}

/// A world of one.
pub struct LocalComm;

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum(&self, _tensor: &mut Tensor) -> Result<(), CommError> {
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

extern "C" {
    /// `MPI_IN_PLACE` of the mpi.h rsmpi was built with (src/dist/shim/mpi_in_place.c).
    fn wsss_mpi_in_place() -> *mut c_void;
}

/// MPI over CPU tensors, on a duplicate of the world communicator (its own message space).
pub struct MpiComm {
    comm: SimpleCommunicator,
}

/// MPI counts are C ints: larger tensors go in pieces of this many elements.
const MPI_MAX_COUNT: usize = i32::MAX as usize;

impl MpiComm {
    fn datatype(kind: Kind) -> ffi::MPI_Datatype {
        // SAFETY: reads of rsmpi's datatype handles, constants once MPI is initialised (a
        // communicator exists only after that).
        unsafe {
            match kind {
                Kind::Float => ffi::RSMPI_FLOAT,
                Kind::Double => ffi::RSMPI_DOUBLE,
                Kind::Uint8 => ffi::RSMPI_UINT8_T,
                _ => ffi::RSMPI_INT64_T,
            }
        }
    }

    fn check(tensor: &Tensor, operation: &'static str) -> Result<(), CommError> {
        check(tensor, "mpi", operation, tensor.device() == Device::Cpu, &[Kind::Float, Kind::Double, Kind::Int64, Kind::Uint8])
    }

    /// Runs `call(pointer, count)` over the tensor's memory in pieces MPI can count.
    fn in_pieces(tensor: &Tensor, call_name: &'static str, mut call: impl FnMut(*mut c_void, i32) -> i32) -> Result<(), CommError> {
        let element = tensor.kind().elt_size_in_bytes();
        let total = tensor.numel();
        let base = tensor.data_ptr() as *mut u8;
        let mut done = 0;
        while done < total {
            let count = (total - done).min(MPI_MAX_COUNT);
            // SAFETY: done < total, so the offset stays inside the tensor's contiguous buffer
            // (`check` refused non-contiguous tensors).
            mpi_status(call_name, call(unsafe { base.add(done * element) } as *mut c_void, count as i32))?;
            done += count;
        }
        Ok(())
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), CommError> {
        Self::check(tensor, "all-reduce")?;
        let datatype = Self::datatype(tensor.kind());
        // SAFETY: `pointer` and `count` lie inside the tensor (in_pieces), of `datatype`; every
        // rank makes the same call on a tensor of the same shape.
        Self::in_pieces(tensor, "MPI_Allreduce", |pointer, count| unsafe {
            ffi::MPI_Allreduce(wsss_mpi_in_place(), pointer, count, datatype, ffi::RSMPI_SUM, self.comm.as_raw())
        })
    }

    fn start_all_reduce_sum(&self, tensor: &Tensor) -> Result<PendingSum, CommError> {
        Self::check(tensor, "all-reduce")?;
        let datatype = Self::datatype(tensor.kind());
        let mut requests = Vec::new();
        // SAFETY: as in `all_reduce_sum`; the caller keeps the tensor alive and untouched until
        // the requests are waited for.
        Self::in_pieces(tensor, "MPI_Iallreduce", |pointer, count| unsafe {
            let mut request = ffi::RSMPI_REQUEST_NULL;
            let code = ffi::MPI_Iallreduce(wsss_mpi_in_place(), pointer, count, datatype, ffi::RSMPI_SUM, self.comm.as_raw(), &mut request);
            requests.push(request);
            code
        })?;
        Ok(PendingSum(Pending::Mpi(requests)))
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        Self::check(tensor, "broadcast")?;
        let datatype = Self::datatype(tensor.kind());
        // SAFETY: as for MPI_Allreduce above.
        Self::in_pieces(tensor, "MPI_Bcast", |pointer, count| unsafe { ffi::MPI_Bcast(pointer, count, datatype, root as i32, self.comm.as_raw()) })
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, CommError> {
        Self::check(tensor, "all-gather")?;
        if tensor.numel() > MPI_MAX_COUNT {
            return Err(CommError::Unsupported {
                backend: "mpi",
                operation: "all-gather",
                what: format!("{:?}", tensor.size()),
                expected: "all-gather is for small values",
            });
        }
        let mut shape = vec![self.size() as i64];
        shape.extend(tensor.size());
        let gathered = Tensor::empty(shape.as_slice(), (tensor.kind(), Device::Cpu));
        let datatype = Self::datatype(tensor.kind());
        let count = tensor.numel() as i32;
        // SAFETY: `gathered` holds size × count elements of the tensor's kind; the counts fit an
        // int (checked above).
        let code = unsafe { ffi::MPI_Allgather(tensor.data_ptr(), count, datatype, gathered.data_ptr(), count, datatype, self.comm.as_raw()) };
        if code != ffi::MPI_SUCCESS as i32 {
            return Err(CommError::Library { call: "MPI_Allgather", message: format!("MPI error code {code}") });
        }
        Ok(gathered)
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.comm.barrier();
        Ok(())
    }
}

/// NCCL over CUDA tensors. The blocking operations are queued on the legacy default stream, the
/// stream libtorch runs its kernels on unless a program sets another (this one never does), so
/// they are ordered after the kernels that produced their inputs and before those that read
/// them. A started sum ([`Communicator::start_all_reduce_sum`]) runs on a stream of its own
/// after the compute stream's work so far, so the kernels queued after it overlap it.
pub struct NcclComm {
    comm: cudarc::nccl::sys::ncclComm_t,
    rank: usize,
    size: usize,
    device: Device,
    /// libtorch's stream on the device's primary context (which this keeps alive).
    compute: Arc<cudarc::driver::CudaStream>,
    /// The started sums' stream (non-blocking: no implicit order with the compute stream).
    communication: Arc<cudarc::driver::CudaStream>,
}

impl NcclComm {
    fn new(world: &World, device: usize) -> Result<NcclComm, CommError> {
        use cudarc::nccl::{result, sys};
        // cudarc panics when a library is missing: look first.
        // SAFETY: these only try to load the libraries; nothing is called through them yet.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CommError::NcclUnavailable("the CUDA driver library (libcuda.so) is not found".into()));
        }
        if !unsafe { sys::is_culib_present() } {
            return Err(CommError::NcclUnavailable(
                "libnccl.so is not found: link it to the libnccl.so.2 of the torch install (nvidia/nccl/lib) in a directory on LD_LIBRARY_PATH; launch/mpirun.sh does this".into(),
            ));
        }
        check_one_nccl()?;
        let context =
            cudarc::driver::CudaContext::new(device).map_err(|e| CommError::Library { call: "cuDevicePrimaryCtxRetain", message: format!("{e:?}") })?;
        let nccl = |call: &'static str| move |e: result::NcclError| CommError::Library { call, message: format!("{:?}", e.0) };
        let mut id = if world.rank == 0 { result::get_uniqueid().map_err(nccl("ncclGetUniqueId"))? } else { sys::ncclUniqueId { internal: [0; 128] } };
        if let Some(mpi) = world.mpi_communicator() {
            // SAFETY: the id is 128 bytes, broadcast as 128 int8 from rank 0 to every rank.
            let code = unsafe { ffi::MPI_Bcast(id.internal.as_mut_ptr() as *mut c_void, 128, ffi::RSMPI_INT8_T, 0, mpi.as_raw()) };
            if code != ffi::MPI_SUCCESS as i32 {
                return Err(CommError::Library { call: "MPI_Bcast of the NCCL id", message: format!("MPI error code {code}") });
            }
        }
        let mut comm = std::ptr::null_mut();
        // SAFETY: every rank passes the same id and size and its own rank; `comm` is written once.
        unsafe { result::comm_init_rank(&mut comm, world.size as i32, id, world.rank as i32) }.map_err(nccl("ncclCommInitRank"))?;
        let communication = context.new_stream().map_err(cuda_error("cuStreamCreate"))?;
        Ok(NcclComm { comm, rank: world.rank, size: world.size, device: Device::Cuda(device), compute: context.default_stream(), communication })
    }

    fn datatype(kind: Kind) -> cudarc::nccl::sys::ncclDataType_t {
        use cudarc::nccl::sys::ncclDataType_t as T;
        match kind {
            Kind::Float => T::ncclFloat32,
            Kind::Double => T::ncclFloat64,
            Kind::Half => T::ncclFloat16,
            Kind::BFloat16 => T::ncclBfloat16,
            Kind::Uint8 => T::ncclUint8,
            _ => T::ncclInt64,
        }
    }

    fn check(tensor: &Tensor, operation: &'static str) -> Result<(), CommError> {
        check(tensor, "nccl", operation, tensor.device().is_cuda(), &[Kind::Float, Kind::Double, Kind::Int64, Kind::Uint8, Kind::Half, Kind::BFloat16])
    }

    fn status(call: &'static str, result: Result<cudarc::nccl::result::NcclStatus, cudarc::nccl::result::NcclError>) -> Result<(), CommError> {
        result.map(|_| ()).map_err(|e| CommError::Library { call, message: format!("{:?}", e.0) })
    }
}

/// The NCCL that cudarc loads (by the name `libnccl.so`) must be the one libtorch's CUDA
/// backend loaded (`libnccl.so.2`, torch's own): where both are in the process as two files
/// (a system NCCL beside torch's wheel), a communicator made by one is refused by the other's
/// collectives as corrupted (seen on the first GPU check: `ncclInvalidArgument`).
fn check_one_nccl() -> Result<(), CommError> {
    let torch = loaded_file(|symbol| {
        // SAFETY: RTLD_NOLOAD only looks up a library already loaded; the handle is closed
        // below and the symbol's address only compared, never called.
        let handle = unsafe { libc::dlopen(c"libnccl.so.2".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            return None;
        }
        let address = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
        unsafe { libc::dlclose(handle) };
        Some(address as *const c_void)
    });
    let Some(torch) = torch else {
        return Ok(()); // libtorch loaded no NCCL of its own (or its file is unknown): nothing to compare.
    };
    let cudarc = loaded_file(|symbol| {
        // SAFETY: the library is present (checked before connecting); the symbol's address is
        // only compared, never called.
        let library = unsafe { cudarc::nccl::sys::culib() };
        unsafe { library.get::<unsafe extern "C" fn()>(symbol.to_bytes_with_nul()) }.ok().map(|f| *f as *const c_void)
    });
    match cudarc {
        Some(file) if file != torch => Err(CommError::NcclUnavailable(format!(
            "two NCCL libraries in this process: libtorch's {} and {}, the libnccl.so that wsss-dist's NCCL binding loads; a link named \
             libnccl.so to the first, in a directory that comes first on LD_LIBRARY_PATH, makes them one (launch/nccl-env.sh does this)",
            torch.display(),
            file.display()
        ))),
        _ => Ok(()),
    }
}

/// The file (links resolved) that holds `ncclAllReduce` as `lookup` finds it; `None` where
/// it is not found or the loader cannot name its file (then there is nothing to compare).
fn loaded_file(lookup: impl Fn(&std::ffi::CStr) -> Option<*const c_void>) -> Option<std::path::PathBuf> {
    let address = lookup(c"ncclAllReduce").filter(|a| !a.is_null())?;
    // SAFETY: Dl_info is plain data (pointers may be null); dladdr fills it for an address of
    // a loaded library, and dli_fname, checked non-null, is a C string it owns.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
    Some(std::fs::canonicalize(&file).unwrap_or_else(|_| file.into()))
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), CommError> {
        Self::check(tensor, "all-reduce")?;
        let pointer = tensor.data_ptr();
        let op = cudarc::nccl::sys::ncclRedOp_t::ncclSum;
        // SAFETY: a contiguous CUDA tensor of a checked kind, in place, on this communicator's
        // device and stream; every rank makes the same call.
        Self::status("ncclAllReduce", unsafe {
            cudarc::nccl::result::all_reduce(pointer, pointer, tensor.numel(), Self::datatype(tensor.kind()), op, self.comm, std::ptr::null_mut())
        })
    }

    fn start_all_reduce_sum(&self, tensor: &Tensor) -> Result<PendingSum, CommError> {
        Self::check(tensor, "all-reduce")?;
        // The communication stream waits for what the compute stream has queued so far (the
        // gradients), sums, and marks its end, which `PendingSum::wait` makes the compute
        // stream wait for.
        self.communication.join(&self.compute).map_err(cuda_error("cuEventRecord/cuStreamWaitEvent"))?;
        let pointer = tensor.data_ptr();
        let op = cudarc::nccl::sys::ncclRedOp_t::ncclSum;
        // SAFETY: as in `all_reduce_sum`, on this communicator's own stream; the caller keeps
        // the tensor alive and untouched until the compute stream has waited for the sum.
        Self::status("ncclAllReduce", unsafe {
            cudarc::nccl::result::all_reduce(
                pointer,
                pointer,
                tensor.numel(),
                Self::datatype(tensor.kind()),
                op,
                self.comm,
                self.communication.cu_stream() as _,
            )
        })?;
        let done = self.communication.record_event(None).map_err(cuda_error("cuEventRecord"))?;
        Ok(PendingSum(Pending::Stream { done, compute: self.compute.clone() }))
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        Self::check(tensor, "broadcast")?;
        let pointer = tensor.data_ptr();
        // SAFETY: as for ncclAllReduce above.
        Self::status("ncclBroadcast", unsafe {
            cudarc::nccl::result::broadcast(pointer, pointer, tensor.numel(), Self::datatype(tensor.kind()), root as i32, self.comm, std::ptr::null_mut())
        })
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, CommError> {
        Self::check(tensor, "all-gather")?;
        let mut shape = vec![self.size as i64];
        shape.extend(tensor.size());
        let gathered = Tensor::empty(shape.as_slice(), (tensor.kind(), tensor.device()));
        // SAFETY: `gathered` holds size × numel elements of the tensor's kind on its device.
        Self::status("ncclAllGather", unsafe {
            cudarc::nccl::result::all_gather(
                tensor.data_ptr(),
                gathered.data_ptr(),
                tensor.numel(),
                Self::datatype(tensor.kind()),
                self.comm,
                std::ptr::null_mut(),
            )
        })?;
        Ok(gathered)
    }

    fn barrier(&self) -> Result<(), CommError> {
        // An all-reduce of one value, waited for: NCCL has no barrier of its own.
        let mut token = Tensor::zeros([1], (Kind::Float, self.device));
        self.all_reduce_sum(&mut token)?;
        let _ = token.double_value(&[0]);
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised in `connect` and is destroyed once, here.
        let _ = unsafe { cudarc::nccl::result::comm_destroy(self.comm) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_world_is_the_identity_and_checks_backends() {
        let world = World::single();
        let comm = connect(&world, Backend::Auto, Device::Cpu).unwrap();
        assert_eq!((comm.backend(), comm.rank(), comm.size()), ("local", 0, 1));
        let mut values = Tensor::from_slice(&[1.5f32, -2.0]);
        comm.all_reduce_mean(&mut values).unwrap();
        assert_eq!(Vec::<f32>::try_from(&values).unwrap(), vec![1.5, -2.0]);
        assert_eq!(comm.all_gather(&Tensor::from_slice(&[7i64, 8])).unwrap().size(), vec![1, 2]);
        assert_eq!(sum_values(comm.as_ref(), &[3.0, 4.0], Device::Cpu).unwrap(), vec![3.0, 4.0]);
        assert_eq!(all_gather_text(comm.as_ref(), "héllo", Device::Cpu).unwrap(), vec!["héllo".to_string()]);
        assert_eq!(all_gather_text(comm.as_ref(), "", Device::Cpu).unwrap(), vec![String::new()]);
        let err = comm.all_reduce_mean(&mut Tensor::from_slice(&[1i64])).unwrap_err().to_string();
        assert!(err.contains("floating-point"), "{err}");

        let err = connect(&world, Backend::Nccl, Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("dist.backend") && err.contains("CUDA"), "{err}");
        let err = connect(&world, Backend::Mpi, Device::Cuda(0)).err().unwrap().to_string();
        assert!(err.contains("dist.backend") && err.contains("nccl"), "{err}");
    }

    #[test]
    fn raw_memory_checks_name_the_problem() {
        let strided = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).tr();
        let err = MpiComm::check(&strided, "all-reduce").unwrap_err().to_string();
        assert!(err.contains("contiguous"), "{err}");
        let err = MpiComm::check(&Tensor::zeros([2], (Kind::Int8, Device::Cpu)), "all-reduce").unwrap_err().to_string();
        assert!(err.contains("f32, f64, i64 and u8"), "{err}");
        assert!(MpiComm::check(&Tensor::zeros([2], (Kind::Double, Device::Cpu)), "broadcast").is_ok());
    }
}
