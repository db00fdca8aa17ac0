// The streaming weight loader: planned slices, reader threads, pinned staging, async uploads.
// See weight_loader.h for the design and the guarantees.
#include "runtime/model/weight_loader.h"

#include <algorithm>
#include <atomic>
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
#include <sys/mman.h>
#include <sys/stat.h>
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
// O_DIRECT's alignment of buffer, offset and length: the page size, a multiple of every logical
// block size in use.
constexpr uint64_t kDirectAlign = 4096;

int EnvPositive(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  const int parsed = std::atoi(value);
  return parsed > 0 ? parsed : fallback;
}

DirectIo DirectFromEnv() {
  const char* value = std::getenv("TESSERA_LOAD_DIRECT");
  if (value == nullptr) return DirectIo::kAuto;
  const std::string v(value);
  if (v == "1" || v == "on") return DirectIo::kOn;
  if (v == "0" || v == "off") return DirectIo::kOff;
  return DirectIo::kAuto;
}

// Whether at least half of the file's pages are in the page cache. Mapping a file and asking
// mincore reads nothing.
bool MostlyCached(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size <= 0) return true;
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return true;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  size_t cached = resident.size();
  if (::mincore(map, size, resident.data()) == 0) {
    cached = 0;
    for (unsigned char r : resident) cached += r & 1;
  }
  ::munmap(map, size);
  return 2 * cached >= resident.size();
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
  direct_ = options.direct == DirectIo::kDefault ? DirectFromEnv() : options.direct;
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

absl::Status WeightLoader::ReadChunkDirect(const Chunk& chunk, int fd, uint8_t* staging,
                                           size_t* head, bool* refused) const {
  const Slice& slice = slices_[chunk.slice];
  const Checkpoint::SliceBytes& b = slice.bytes;
  const uint64_t run = chunk.begin / b.run_bytes;
  const uint64_t offset = b.file_offset + run * b.stride + chunk.begin % b.run_bytes;
  const uint64_t end = offset + (chunk.end - chunk.begin);
  const uint64_t first = offset / kDirectAlign * kDirectAlign;
  const uint64_t last = (end + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
  *head = static_cast<size_t>(offset - first);
  *refused = false;
  for (uint64_t done = 0; first + done < end;) {
    const uint64_t want = std::min(last - first - done, kMaxPread);
    const ssize_t got = ::pread(fd, staging + done, want, static_cast<off_t>(first + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && errno == EINVAL && done == 0) {
      *refused = true;
      return absl::OkStatus();
    }
    if (got < 0) {
      return absl::DataLossError(absl::StrCat(
          b.file->path(), ": tensor \"", slice.name, "\": O_DIRECT read of ", last - first - done,
          " bytes at offset ", first + done, " failed: ", std::strerror(errno)));
    }
    // A read that stops off the alignment stopped at the end of the file: reading on from there
    // would be refused as unaligned.
    if (got > 0) done += static_cast<uint64_t>(got);
    if (got == 0 || (done % kDirectAlign != 0 && first + done < end)) {
      return absl::DataLossError(absl::StrCat(b.file->path(), ": tensor \"", slice.name,
                                              "\": the file ends at byte ", first + done,
                                              ", before the tensor's bytes up to ", end,
                                              " (truncated or replaced after it was opened?)"));
    }
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

  // Per file a buffered descriptor and, where O_DIRECT is chosen and allowed, a direct one (-1
  // otherwise); closed on every path out.
  std::map<const SafetensorsFile*, std::pair<int, int>> fds;
  struct Closer {
    std::map<const SafetensorsFile*, std::pair<int, int>>& fds;
    ~Closer() {
      for (const auto& [file, fd] : fds) {
        ::close(fd.first);
        if (fd.second >= 0) ::close(fd.second);
      }
    }
  } closer{fds};
  // NOTE: buffers no larger than the largest slice: a small model takes small buffers.
  uint64_t largest = 0;
  for (const Slice& slice : slices_) {
    largest = std::max(largest, slice.bytes.run_bytes * static_cast<uint64_t>(slice.bytes.runs));
  }
  const size_t slot_bytes = static_cast<size_t>(std::min<uint64_t>(
      staging_bytes_, (largest + kStagingAlign - 1) / kStagingAlign * kStagingAlign));
  std::vector<std::pair<int, int>> slice_fd(slices_.size());
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
      int direct = -1;
      if (direct_ == DirectIo::kOn || (direct_ == DirectIo::kAuto && !MostlyCached(fd))) {
        direct = ::open(file->path().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);  // -1: refused
      }
      it = fds.emplace(file, std::make_pair(fd, direct)).first;
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
  // NOTE: one pinned allocation for all buffers: pinning is slow per call, not per byte. With
  // O_DIRECT each buffer starts on kDirectAlign and has room for the rounding at both ends.
  bool any_direct = false;
  for (const auto& [file, fd] : fds) any_direct = any_direct || fd.second >= 0;
  const size_t slot_stride =
      any_direct ? (slot_bytes + 3 * kDirectAlign - 1) / kDirectAlign * kDirectAlign : slot_bytes;
  DeviceBuffer staging =
      backend_.AllocateStaging(num_slots * slot_stride + (any_direct ? kDirectAlign : 0));
  uint8_t* staging_base = staging.as<uint8_t>();
  if (any_direct) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(staging_base);
    staging_base += (kDirectAlign - p % kDirectAlign) % kDirectAlign;
  }
  DeviceBuffer scratch;
  if (convert) scratch = backend_.Allocate(num_slots * slot_bytes);
  std::vector<std::unique_ptr<DeviceEvent>> uploaded(num_slots);
  for (auto& event : uploaded) event = backend_.CreateEvent();
  auto staging_of = [&](int slot) { return staging_base + slot * slot_stride; };
  std::vector<size_t> slot_head(num_slots, 0);  // where the chunk's bytes start in its buffer
  std::atomic<uint64_t> direct_bytes{0};

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
      const Chunk& chunk = chunks[c];
      const auto [buffered_fd, direct_fd] = slice_fd[chunk.slice];
      const uint64_t run_bytes = slices_[chunk.slice].bytes.run_bytes;
      size_t head = 0;
      bool refused = true;
      absl::Status status;
      if (direct_fd >= 0 && chunk.begin / run_bytes == (chunk.end - 1) / run_bytes) {
        status = ReadChunkDirect(chunk, direct_fd, staging_of(slot), &head, &refused);
        if (status.ok() && !refused) direct_bytes += chunk.end - chunk.begin;
      }
      if (status.ok() && refused) {
        head = 0;
        status = ReadChunk(chunk, buffered_fd, staging_of(slot));
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        slot_head[slot] = head;
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
                          slice.dst_dtype, staging_of(job.first) + slot_head[job.first], src_dtype,
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
  stats_.direct_bytes += direct_bytes;
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.threads = readers;
  stats_.staging = std::max(stats_.staging, num_slots * slot_stride);
  stats_.chunks += static_cast<int64_t>(chunks.size());
  return absl::OkStatus();
}

}  // namespace tessera
