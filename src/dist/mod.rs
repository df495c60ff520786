//! Distribution: the process world (MPI when launched by mpirun/srun, else a world of one) and
//! the device each rank computes on. The communicator backends (MPI, NCCL) and bucketed
//! gradient averaging build on this.

pub mod device;
pub mod world;

pub use device::select_device;
pub use world::World;
