// The NCCL backend of Communicator, for the CUDA backend's ranks (one GPU each).
//
// Device buffers travel over NCCL, enqueued on the backend's stream so they are ordered after the
// kernels that produced them; host buffers (the control plane, logits) travel over the MPI
// communicator underneath.
// Each call looks at where its buffer lives (cudaPointerGetAttributes).
//
// Stream-ordered: a collective on device buffers only enqueues its NCCL work on the stream and
// returns; the kernels after it wait on the device, and the host waits only where it reads results
// (the backend's Synchronize(), through which CopyToHost / DownloadFloat wait). So a TP
// all-reduce costs no host round trip, and collectives can be captured in a CUDA graph (during a
// capture the calls only enqueue: no pointer queries, no stream queries, no waits).
//
// Faults (docs/design.md, "Errors"): a dead or hung peer shows as a stream that never drains. The
// communicator therefore installs the backend's stream wait (Backend::SetStreamWait): it polls the
// stream under a CollectiveGuard named after the last collective enqueued ("stream wait after
// all_reduce" on communicator "tp"), checks every live NCCL communicator's asynchronous error
// while it waits, and on an NCCL error or past CollectiveTimeoutSeconds() aborts the NCCL
// communicators (so stuck kernels end) and ends the job with exit code 3 (watchdog.h EndJob). The
// enqueues themselves also run under a CollectiveGuard: NCCL may block in one while it connects
// to a peer for the first time.
//
// Small all-reduces (bf16 or f32 device messages up to a threshold, 1 MB by default) skip NCCL:
// when the communicator's ranks share a node and their GPUs have peer access, a one-shot kernel
// over peer memory does them (parallel/peer_allreduce.h; TESSERA_CUSTOM_ALLREDUCE=0 turns it
// off). Its results are bit-identical on every rank (an fp32 sum in rank order, rounded once).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/ops.h"
#include "parallel/communicator.h"

namespace tessera {

// Builds the NCCL communicator over the ranks of `host` (collective over `host`, which must
// outlive the result): rank 0 makes the NCCL unique id and broadcasts it over `host`. Collectives
// are enqueued on `backend`'s stream (the CUDA backend; the current device must be the rank's GPU)
// and the backend's host waits become the bounded wait described above. `backend` must outlive
// the result and every communicator Split from it.
//
// `custom_allreduce_max_bytes` is the largest all-reduce the peer path takes (0: NCCL for all);
// communicators Split from the result inherit it.
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, Backend& backend,
                                                   const std::string& name);
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& host, Backend& backend,
                                                   const std::string& name,
                                                   size_t custom_allreduce_max_bytes);

// The largest all-reduce (bytes) `comm` does over peer memory; 0 when NCCL carries them all (the
// peer path is off or unavailable, or `comm` is not an NCCL communicator).
size_t CustomAllReduceMaxBytes(const Communicator& comm);

}  // namespace tessera
