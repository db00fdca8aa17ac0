// Streams this rank's slices of a checkpoint onto the backend, with host memory bounded by a few
// staging buffers, whatever the model's size.
//
// Why: reading a tensor into host memory, converting it to float32 there and uploading it from
// pageable memory had the whole model pass through host RAM (the mapping's pages count as the
// process's own) and ran at well under 1 GB/s. Here each slice is planned as byte ranges of its
// file (Checkpoint::LocateSlice: a row slice is one range, a column slice one range per row), the
// ranges are pread by reader threads into pinned staging buffers, and each filled buffer is
// uploaded asynchronously, converted on the device if the file's dtype is not the backend's
// (Backend::UploadStaged), while the readers fill the next ones. Nothing touches the mapping, so
// the page cache holds the file and this process holds only the staging buffers.
//
// Pipeline: the queued slices are cut into chunks of at most one staging buffer (in file order);
// `threads` readers each take a free buffer and the next chunk, read it, and hand it to the
// thread that called Run, which enqueues its upload and records an event on it. A buffer is free
// again once its event has passed. Chunks write disjoint parts of the destination, so the order
// in which they land does not matter, and the result is what ReadFloat + UploadFloat gave, bit for
// bit (bf16 NaN payloads excepted: those were quieted by the float32 round trip, now they are
// copied).
//
// Reads: buffered pread (the page cache and the kernel's read-ahead), or O_DIRECT for files that
// are mostly not in the page cache (WeightLoadOptions::direct, TESSERA_LOAD_DIRECT=auto|1|0). An
// O_DIRECT read covers the chunk's bytes rounded out to 4 KiB into a buffer aligned to 4 KiB, and
// the upload starts at the tensor's first byte inside it. Each such pread of up to a staging
// buffer is split by the kernel into many device requests at once, and the readers keep several
// in flight per file: a deeper queue than read-ahead's, and no copy through the page cache.
// Chunks of several runs (column slices) and files whose filesystem refuses O_DIRECT are read
// buffered.
//
// Errors: every check of LocateSlice happens when a slice is queued (Add), so a wrong name, shape
// or slice fails before anything is read, naming the tensor and file. A read that fails or comes
// up short (a shard truncated or replaced after it was opened) fails Run naming the file, the
// tensor and the byte offset; Run then waits for the uploads in flight before it returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "runtime/model/safetensors.h"

namespace tessera {

enum class DirectIo {
  kDefault,  // TESSERA_LOAD_DIRECT: "auto" (or unset), "1" (kOn), "0" (kOff)
  kAuto,     // O_DIRECT for a file of which less than half is in the page cache (mincore)
  kOn,       // O_DIRECT for every file whose filesystem allows it
  kOff,      // buffered reads only
};

struct WeightLoadOptions {
  // Reader threads; 0 = TESSERA_LOAD_THREADS, else 8 (but at most the hardware's threads).
  int threads = 0;
  // Bytes of each staging buffer; there are two per reader. 0 = TESSERA_LOAD_STAGING_MIB
  // (MiB per buffer), else 32 MiB. Rounded up to 16 bytes.
  size_t staging_bytes = 0;
  DirectIo direct = DirectIo::kDefault;
};

struct WeightLoadStats {
  uint64_t bytes = 0;         // read from the files
  uint64_t direct_bytes = 0;  // of `bytes`, read with O_DIRECT
  double seconds = 0;         // Run's wall time, from the first read to the last upload done
  int threads = 0;            // readers
  size_t staging = 0;         // bytes of pinned staging, all buffers together
  int64_t slices = 0;         // slices queued
  int64_t chunks = 0;         // staging-buffer loads
  double gb_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
};

class WeightLoader {
 public:
  WeightLoader(const Checkpoint& checkpoint, Backend& backend, WeightLoadOptions options = {});
  ~WeightLoader();
  WeightLoader(const WeightLoader&) = delete;
  WeightLoader& operator=(const WeightLoader&) = delete;

  // Queues the slice [start, start + length) of tensor `name` along `dim` (length < 0: to the
  // end; Checkpoint::ReadFloat's rules), `count` elements, for `device_dst` as `dst_dtype`.
  // Checks the request now (LocateSlice's errors; a count other than the slice's); reads nothing.
  // `device_dst` must stay allocated until Run returns.
  absl::Status Add(const std::string& name, int dim, int64_t start, int64_t length, size_t count,
                   DType dst_dtype, void* device_dst);

  // Reads and uploads everything queued. When it returns, every upload it enqueued has completed
  // (on error too), the staging buffers are freed and the queue is empty.
  absl::Status Run();

  // Totals of every Run so far.
  const WeightLoadStats& stats() const { return stats_; }

 private:
  struct Slice {
    std::string name;
    Checkpoint::SliceBytes bytes;
    DType dst_dtype;
    char* dst;
  };
  struct Chunk {
    int slice;
    uint64_t begin, end;  // bytes of the slice's dense (row-major) image
  };
  // Reads a chunk into `staging`, run by run.
  absl::Status ReadChunk(const Chunk& chunk, int fd, uint8_t* staging) const;
  // Reads a chunk of one run with O_DIRECT into `staging` (4 KiB-aligned, the chunk's size plus
  // 8 KiB); its bytes start at staging + *head. Sets *refused when the filesystem refuses the
  // read (the caller reads it buffered).
  absl::Status ReadChunkDirect(const Chunk& chunk, int fd, uint8_t* staging, size_t* head,
                               bool* refused) const;

  const Checkpoint& checkpoint_;
  Backend& backend_;
  int threads_;
  size_t staging_bytes_;
  DirectIo direct_;
  std::vector<Slice> slices_;
  WeightLoadStats stats_;
};

}  // namespace tessera
