//! Distribution: the process world (MPI when launched by mpirun/srun, else a world of one) and
//! the device each rank computes on, the communicator backends (local, MPI, NCCL), and the
//! bucketed gradient all-reduce of data-parallel training.

pub mod comm;
pub mod ddp;
pub mod device;
pub mod map;
pub mod sync_bn;
pub mod world;

pub use comm::{connect, Backend, CommError, Communicator};
pub use ddp::GradientBuckets;
pub use device::{select_device, DeviceSpec};
pub use world::World;
