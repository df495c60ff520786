/* MPI_IN_PLACE is a macro whose value differs between MPI implementations (Open MPI: 1,
   MPICH: -1) and rsmpi does not export it: this returns the one of the mpi.h we build with. */
#include <mpi.h>

void *wsss_mpi_in_place(void) { return MPI_IN_PLACE; }
