// The streaming weight loader: planned slices, reader threads, pinned staging, async uploads.
// See weight_loader.h for the design and the guarantees.
#include "runtime/model/weight_loader.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "runtime/model/load_progress.h"

namespace tessera {
namespace {

constexpr int kDefaultThreads = 8;
constexpr size_t kDefaultStagingMiB = 32;
// A chunk starts on a multiple of the buffer size, so that must be a multiple of every element.
constexpr size_t kStagingAlign = 16;
// The most one pread asks for (Linux transfers at most ~2 GiB per call anyway).
constexpr uint64_t kMaxPread = uint64_t{1} << 30;

int EnvPositive(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  const int parsed = std::atoi(value);
  return parsed > 0 ? parsed : fallback;
}

}  // namespace

WeightLoader::WeightLoader(const Checkpoint& checkpoint, Backend& backend,
                           WeightLoadOptions options)
    : checkpoint_(checkpoint), backend_(backend) {
  threads_ = options.threads;
  if (threads_ <= 0) {
    threads_ = EnvPositive("TESSERA_LOAD_THREADS", kDefaultThreads);
    const int hardware = static_cast<int>(std::thread::hardware_concurrency());
    if (hardware > 0) threads_ = std::min(threads_, hardware);
  }
  threads_ = std::max(threads_, 1);
  staging_bytes_ = options.staging_bytes;
  if (staging_bytes_ == 0) {
    staging_bytes_ =
        static_cast<size_t>(EnvPositive("TESSERA_LOAD_STAGING_MIB", kDefaultStagingMiB)) << 20;
  }
  staging_bytes_ = (staging_bytes_ + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
}

WeightLoader::~WeightLoader() = default;

absl::Status WeightLoader::Add(const std::string& name, int dim, int64_t start, int64_t length,
                               size_t count, DType dst_dtype, void* device_dst) {
  ASSIGN_OR_RETURN(const Checkpoint::SliceBytes bytes,
                   checkpoint_.LocateSlice(name, dim, start, length));
  if (static_cast<size_t>(bytes.elements) != count) {
    return absl::InternalError(absl::StrCat("tensor \"", name, "\" (", bytes.file->path(),
                                            "): the slice holds ", bytes.elements,
                                            " elements, its destination ", count));
  }
  ++stats_.slices;
  if (bytes.runs == 0) return absl::OkStatus();
  slices_.push_back(Slice{name, bytes, dst_dtype, static_cast<char*>(device_dst)});
  return absl::OkStatus();
}

absl::Status WeightLoader::ReadChunk(const Chunk& chunk, int fd, uint8_t* staging) const {
  const Slice& slice = slices_[chunk.slice];
  const Checkpoint::SliceBytes& b = slice.bytes;
  for (uint64_t pos = chunk.begin; pos < chunk.end;) {
    // The chunk's bytes [pos, pos + n) lie in run `run` of the slice, from byte `within` of it.
    const uint64_t run = pos / b.run_bytes, within = pos % b.run_bytes;
    const uint64_t n = std::min(b.run_bytes - within, chunk.end - pos);
    const uint64_t offset = b.file_offset + run * b.stride + within;
    uint8_t* dst = staging + (pos - chunk.begin);
    for (uint64_t done = 0; done < n;) {
      const ssize_t got =
          ::pread(fd, dst + done, std::min(n - done, kMaxPread), static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) {
        return absl::DataLossError(absl::StrCat(b.file->path(), ": tensor \"", slice.name,
                                                "\": read of ", n - done, " bytes at offset ",
                                                offset + done, " failed: ", std::strerror(errno)));
      }
      if (got == 0) {
        return absl::DataLossError(absl::StrCat(b.file->path(), ": tensor \"", slice.name,
                                                "\": the file ends at byte ", offset + done,
                                                ", before the tensor's bytes up to ", offset + n,
                                                " (truncated or replaced after it was opened?)"));
      }
      done += static_cast<uint64_t>(got);
    }
    pos += n;
  }
  ReportLoadProgress(b.file->path(), static_cast<int64_t>(chunk.end - chunk.begin));
  return absl::OkStatus();
}

absl::Status WeightLoader::Run() {
  if (slices_.empty()) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  std::vector<Slice> slices = std::move(slices_);
  slices_.clear();
  // File order: neighbouring chunks are neighbouring bytes, which a cold disk reads fastest.
  std::stable_sort(slices.begin(), slices.end(), [](const Slice& a, const Slice& b) {
    return std::tie(a.bytes.file->path(), a.bytes.file_offset) <
           std::tie(b.bytes.file->path(), b.bytes.file_offset);
  });
  slices_ = std::move(slices);

  // One descriptor per file, closed on every path out.
  std::map<const SafetensorsFile*, int> fds;
  struct Closer {
    std::map<const SafetensorsFile*, int>& fds;
    ~Closer() {
      for (const auto& [file, fd] : fds) ::close(fd);
    }
  } closer{fds};
  // NOTE: buffers no larger than the largest slice: a small model takes small buffers.
  uint64_t largest = 0;
  for (const Slice& slice : slices_) {
    largest = std::max(largest, slice.bytes.run_bytes * static_cast<uint64_t>(slice.bytes.runs));
  }
  const size_t slot_bytes = static_cast<size_t>(std::min<uint64_t>(
      staging_bytes_, (largest + kStagingAlign - 1) / kStagingAlign * kStagingAlign));
  std::vector<int> slice_fd(slices_.size());
  std::vector<Chunk> chunks;
  bool convert = false;
  uint64_t total = 0;
  for (size_t i = 0; i < slices_.size(); ++i) {
    const Slice& slice = slices_[i];
    const SafetensorsFile* file = slice.bytes.file;
    auto it = fds.find(file);
    if (it == fds.end()) {
      const int fd = ::open(file->path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        slices_.clear();
        return absl::NotFoundError(absl::StrCat(file->path(), ": cannot open to read tensor \"",
                                                slice.name, "\": ", std::strerror(errno)));
      }
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
      it = fds.emplace(file, fd).first;
    }
    slice_fd[i] = it->second;
    convert = convert || backend_.UploadNeedsScratch(slice.bytes.info->dtype, slice.dst_dtype);
    const uint64_t bytes = slice.bytes.run_bytes * static_cast<uint64_t>(slice.bytes.runs);
    for (uint64_t begin = 0; begin < bytes; begin += slot_bytes) {
      chunks.push_back(
          Chunk{static_cast<int>(i), begin, std::min<uint64_t>(begin + slot_bytes, bytes)});
    }
    total += bytes;
  }

  // Two buffers per reader: one being read into while the other's upload runs.
  const int readers = static_cast<int>(std::min<size_t>(threads_, chunks.size()));
  const int num_slots = static_cast<int>(std::min<size_t>(2 * readers, chunks.size()));
  // NOTE: one pinned allocation for all buffers: pinning is slow per call, not per byte.
  DeviceBuffer staging = backend_.AllocateStaging(num_slots * slot_bytes);
  DeviceBuffer scratch;
  if (convert) scratch = backend_.Allocate(num_slots * slot_bytes);
  std::vector<std::unique_ptr<DeviceEvent>> uploaded(num_slots);
  for (auto& event : uploaded) event = backend_.CreateEvent();
  auto staging_of = [&](int slot) { return staging.as<uint8_t>() + slot * slot_bytes; };

  // Shared with the readers, under `mu`.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int> free_slots;
  std::deque<std::pair<int, size_t>> ready;  // (slot, chunk) read, waiting for their upload
  size_t next_chunk = 0;
  bool stop = false;
  absl::Status error;
  for (int s = 0; s < num_slots; ++s) free_slots.push_back(s);

  auto read_loop = [&] {
    for (;;) {
      int slot;
      size_t c;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] {
          return stop || !error.ok() || next_chunk >= chunks.size() || !free_slots.empty();
        });
        if (stop || !error.ok() || next_chunk >= chunks.size()) return;
        slot = free_slots.front();
        free_slots.pop_front();
        c = next_chunk++;
      }
      absl::Status status = ReadChunk(chunks[c], slice_fd[chunks[c].slice], staging_of(slot));
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!status.ok()) {
          if (error.ok()) error = std::move(status);
        } else {
          ready.emplace_back(slot, c);
        }
      }
      cv.notify_all();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(readers);
  for (int t = 0; t < readers; ++t) threads.emplace_back(read_loop);

  // This thread enqueues the uploads: every Backend call stays on it.
  std::deque<int> in_flight;  // slots whose upload is enqueued, oldest first
  auto release_oldest = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      free_slots.push_back(in_flight.front());
    }
    in_flight.pop_front();
    cv.notify_all();
  };
  absl::Status status;
  for (size_t submitted = 0; submitted < chunks.size();) {
    while (!in_flight.empty() && uploaded[in_flight.front()]->Query()) release_oldest();
    std::pair<int, size_t> job{-1, 0};
    {
      std::unique_lock<std::mutex> lock(mu);
      if (in_flight.empty()) cv.wait(lock, [&] { return !ready.empty() || !error.ok(); });
      if (!error.ok()) {
        status = error;
        break;
      }
      if (!ready.empty()) {
        job = ready.front();
        ready.pop_front();
      }
    }
    if (job.first < 0) {  // nothing read yet and every buffer busy: wait for the oldest upload
      uploaded[in_flight.front()]->Wait();
      release_oldest();
      continue;
    }
    const Chunk& chunk = chunks[job.second];
    const Slice& slice = slices_[chunk.slice];
    const DType src_dtype = slice.bytes.info->dtype;
    const size_t src_size = DTypeSize(src_dtype);
    backend_.UploadStaged(slice.dst + chunk.begin / src_size * DTypeSize(slice.dst_dtype),
                          slice.dst_dtype, staging_of(job.first), src_dtype,
                          (chunk.end - chunk.begin) / src_size,
                          convert ? scratch.as<uint8_t>() + job.first * slot_bytes : nullptr);
    uploaded[job.first]->Record();
    in_flight.push_back(job.first);
    ++submitted;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  for (std::thread& t : threads) t.join();
  // NOTE: the buffers are freed below; nothing may still copy from them.
  for (int slot : in_flight) uploaded[slot]->Wait();
  slices_.clear();
  if (!status.ok()) return status;

  stats_.bytes += total;
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.threads = readers;
  stats_.staging = std::max(stats_.staging, num_slots * slot_bytes);
  stats_.chunks += static_cast<int64_t>(chunks.size());
  return absl::OkStatus();
}

}  // namespace tessera
