//! The set of cooperating processes. A process started by `mpirun` or `srun` joins the MPI
//! world; one started directly is a world of one and never touches MPI (so plain CLI calls
//! pay no MPI start-up).

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// Environment variables that launchers set for every rank they start.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"];

/// This process's place among the ranks of a job.
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes on this node: selects the GPU.
    pub local_rank: usize,
    mpi: Option<MpiWorld>,
}

struct MpiWorld {
    /// Kept alive for the life of the world: dropping it finalises MPI.
    _universe: mpi::environment::Universe,
    comm: SimpleCommunicator,
}

impl World {
    /// A world of one process.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, mpi: None }
    }

    /// Joins the MPI world when a launcher started this process, else a world of one.
    pub fn from_env() -> Result<World, String> {
        if !LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return Ok(World::single());
        }
        // Serialized: the map phase's coordinator thread talks MPI while the main thread computes.
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or("MPI was already initialised in this process")?;
        if threading < mpi::Threading::Serialized {
            return Err(format!("the MPI library offers thread level {threading:?}; wsss-dist needs Serialized"));
        }
        let comm = universe.world();
        let local_rank = comm.split_shared(comm.rank()).rank() as usize;
        Ok(World { rank: comm.rank() as usize, size: comm.size() as usize, local_rank, mpi: Some(MpiWorld { _universe: universe, comm }) })
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The world communicator when MPI runs this job.
    pub(crate) fn mpi_communicator(&self) -> Option<&SimpleCommunicator> {
        self.mpi.as_ref().map(|mpi| &mpi.comm)
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        if let Some(mpi) = &self.mpi {
            mpi.comm.barrier();
        }
    }

    /// Ends the whole job at once (every rank) with `code`: a failing rank must not leave the
    /// others waiting forever in a collective.
    pub fn abort(&self, code: i32) -> ! {
        match &self.mpi {
            Some(mpi) => mpi.comm.abort(code),
            None => std::process::exit(code),
        }
    }
}

/// The MPI library's own version string.
pub fn mpi_library_version() -> String {
    mpi::environment::library_version().unwrap_or_else(|_| "unknown".into()).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string()
}
