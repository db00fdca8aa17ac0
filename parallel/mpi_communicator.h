// The MPI backend of Communicator, for the CPU backend and the control plane.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

// Wraps `comm` (not owned when it is MPI_COMM_WORLD; owned and freed otherwise).
std::unique_ptr<Communicator> MakeMpiCommunicator(MPI_Comm comm, const std::string& name);

}  // namespace tessera
