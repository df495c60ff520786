//! Distribution: the process world (MPI when launched by mpirun/srun, else a world of one).
//! The communicator backends (MPI, NCCL) and bucketed gradient averaging build on this.

pub mod world;

pub use world::World;
