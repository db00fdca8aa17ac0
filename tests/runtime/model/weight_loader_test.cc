// The streaming weight loader on the CPU backend: a sharded checkpoint (three shards and an
// index, BF16 / F16 / F32 / F8_E4M3 tensors of odd shapes) loaded slice by slice (row, column
// and middle-dimension slices, whole tensors) through staging buffers far smaller than the
// largest tensor, with several reader threads, gives exactly the values Checkpoint::ReadFloat
// reads (the loader this one replaced), with buffered reads and with O_DIRECT (aligned reads with
// the tensor's bytes cut out); request errors fail at Add naming tensor and file; a shard
// truncated after it was opened fails Run cleanly, naming file and tensor, on either read path.
#include "runtime/model/weight_loader.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "runtime/model/safetensors_writer.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;

struct Spec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  int shard;
};

const std::vector<Spec> kSpecs = {
    {"a.bf16", DType::kBF16, {37, 53}, 0},
    {"b.f16", DType::kF16, {29, 41}, 0},
    {"c.f32", DType::kF32, {7, 11, 13}, 1},
    {"d.f8", DType::kF8E4M3, {19, 23}, 1},
    {"e.bf16", DType::kBF16, {5, 3, 9, 4}, 2},
    {"f.bf16", DType::kBF16, {1}, 2},
    {"g.ids", DType::kI32, {6}, 2},
};

// Finite random values of each dtype (raw bits drawn until they decode to a finite float).
std::vector<uint8_t> RandomBytes(DType dtype, int64_t count, std::mt19937& rng) {
  const size_t size = DTypeSize(dtype);
  std::vector<uint8_t> bytes(count * size);
  for (int64_t i = 0; i < count; ++i) {
    for (;;) {
      const uint32_t bits = rng();
      std::memcpy(&bytes[i * size], &bits, size);
      if (dtype == DType::kI32) break;
      float f;
      ConvertToFloat(dtype, &bytes[i * size], 1, &f);
      if (std::isfinite(f)) break;
    }
  }
  return bytes;
}

class WeightLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tessera-loader-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::mt19937 rng(11);
    std::vector<std::vector<TensorToWrite>> shards(3);
    std::string index = "{\"weight_map\": {";
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      const Spec& s = kSpecs[i];
      int64_t count = 1;
      for (int64_t d : s.shape) count *= d;
      shards[s.shard].push_back({s.name, s.dtype, s.shape, RandomBytes(s.dtype, count, rng)});
      index += (i ? ", \"" : "\"") + s.name + "\": \"" + Shard(s.shard) + "\"";
    }
    index += "}}";
    for (int k = 0; k < 3; ++k) {
      ASSERT_TRUE(WriteSafetensors(dir_ + "/" + Shard(k), shards[k]).ok());
    }
    std::ofstream(dir_ + "/model.safetensors.index.json") << index;
    auto ckpt = Checkpoint::Open(dir_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = std::move(*ckpt);
    cpu_ = MakeCpuBackend();
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  static std::string Shard(int k) {
    return "model-0000" + std::to_string(k + 1) + "-of-00003.safetensors";
  }

  std::string dir_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<Backend> cpu_;
};

struct Request {
  std::string name;
  int dim;
  int64_t start, length;
  int64_t count;
};

// Every dimension of every float tensor: whole, a head, an odd middle slice, a tail, one index.
std::vector<Request> AllSlices() {
  std::vector<Request> requests;
  for (const Spec& s : kSpecs) {
    if (s.dtype == DType::kI32) continue;
    int64_t total = 1;
    for (int64_t d : s.shape) total *= d;
    for (int dim = 0; dim < static_cast<int>(s.shape.size()); ++dim) {
      const int64_t extent = s.shape[dim];
      const std::pair<int64_t, int64_t> ranges[] = {{0, extent},
                                                    {0, (extent + 1) / 2},
                                                    {1, extent / 2},
                                                    {extent / 3, extent - extent / 3},
                                                    {extent - 1, 1}};
      for (auto [start, length] : ranges) {
        if (start < 0 || length <= 0 || start + length > extent) continue;
        requests.push_back({s.name, dim, start, length, total / extent * length});
      }
    }
  }
  return requests;
}

WeightLoadOptions Options(int threads, size_t staging_bytes, DirectIo direct = DirectIo::kOff) {
  WeightLoadOptions options;
  options.threads = threads;
  options.staging_bytes = staging_bytes;
  options.direct = direct;
  return options;
}

// Whether this directory's filesystem allows O_DIRECT reads (tmpfs did not before Linux 6.6).
bool DirectAllowed(const std::string& dir) {
  const std::string path = dir + "/model-00001-of-00003.safetensors";
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) return false;
  void* buffer = std::aligned_alloc(4096, 4096);
  const bool ok = ::pread(fd, buffer, 4096, 0) >= 0;
  std::free(buffer);
  ::close(fd);
  return ok;
}

// `stats`, if given, receives the loader's.
void LoadAndCompare(const Checkpoint& ckpt, Backend& cpu, WeightLoadOptions options,
                    WeightLoadStats* stats = nullptr) {
  const std::vector<Request> requests = AllSlices();
  WeightLoader loader(ckpt, cpu, options);
  std::vector<DeviceBuffer> out;
  uint64_t bytes = 0;
  size_t largest = 0;
  for (const Request& r : requests) {
    out.push_back(cpu.Allocate(r.count * sizeof(float)));
    std::memset(out.back().data(), 0xff, r.count * sizeof(float));
    ASSERT_TRUE(
        loader.Add(r.name, r.dim, r.start, r.length, r.count, DType::kF32, out.back().data()).ok());
    const auto entry = ckpt.Find(r.name);
    bytes += r.count * DTypeSize(entry->info->dtype);
    largest = std::max<size_t>(largest, entry->info->data_end - entry->info->data_begin);
  }
  if (options.staging_bytes > 0) {
    EXPECT_LT(options.staging_bytes, largest);
  }
  const absl::Status run = loader.Run();
  EXPECT_TRUE(run.ok()) << run;
  EXPECT_EQ(loader.stats().bytes, bytes);
  EXPECT_EQ(loader.stats().slices, static_cast<int64_t>(requests.size()));
  for (size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    std::vector<float> want(r.count);
    ASSERT_TRUE(ckpt.ReadFloat(r.name, r.dim, r.start, r.length, want.data()).ok());
    EXPECT_EQ(std::memcmp(out[i].data(), want.data(), r.count * sizeof(float)), 0)
        << r.name << " dim " << r.dim << " [" << r.start << ", +" << r.length << ")";
  }
  if (stats != nullptr) *stats = loader.stats();
}

TEST_F(WeightLoaderTest, StagingSmallerThanTheLargestTensorGivesTheSameWeights) {
  // 48 bytes: every tensor but the 1-element one spans several chunks; column slices' runs are
  // split across chunks.
  LoadAndCompare(*ckpt_, *cpu_, Options(3, 48));
  LoadAndCompare(*ckpt_, *cpu_, Options(1, 16));
  LoadAndCompare(*ckpt_, *cpu_, Options(4, 1000));
}

TEST_F(WeightLoaderTest, DefaultOptionsGiveTheSameWeights) { LoadAndCompare(*ckpt_, *cpu_, {}); }

// O_DIRECT: every single-run chunk read as whole 4 KiB blocks around it (tensors start at any
// byte of the file), the tensor's bytes taken from inside; multi-run chunks (column slices) read
// buffered. Same bytes as ReadFloat, through staging smaller than the largest tensor too.
TEST_F(WeightLoaderTest, DirectReadsGiveTheSameWeights) {
  if (!DirectAllowed(dir_)) GTEST_SKIP() << dir_ << ": this filesystem refuses O_DIRECT";
  for (const WeightLoadOptions& options :
       {Options(3, 48, DirectIo::kOn), Options(1, 16, DirectIo::kOn),
        Options(4, 1000, DirectIo::kOn), Options(2, 0, DirectIo::kOn)}) {
    WeightLoadStats stats;
    LoadAndCompare(*ckpt_, *cpu_, options, &stats);
    EXPECT_GT(stats.direct_bytes, 0u);
    EXPECT_LT(stats.direct_bytes, stats.bytes);  // column slices' chunks stay buffered
  }
  // Buffered only, and auto on files just written (in the page cache): no O_DIRECT.
  for (DirectIo direct : {DirectIo::kOff, DirectIo::kAuto}) {
    WeightLoadStats stats;
    LoadAndCompare(*ckpt_, *cpu_, Options(2, 48, direct), &stats);
    EXPECT_EQ(stats.direct_bytes, 0u);
  }
}

// auto: a file evicted from the page cache is read with O_DIRECT, one in it buffered.
TEST_F(WeightLoaderTest, AutoReadsUncachedFilesDirect) {
  if (!DirectAllowed(dir_)) GTEST_SKIP() << dir_ << ": this filesystem refuses O_DIRECT";
  // One 8 MiB tensor: the pages Open maps for the header (up to one large folio) stay cached,
  // the rest can be evicted.
  constexpr int64_t kRows = 2048, kCols = 2048;
  const std::string dir = dir_ + "/big";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  std::mt19937 rng(5);
  ASSERT_TRUE(
      WriteSafetensors(
          dir + "/model.safetensors",
          {{"w", DType::kBF16, {kRows, kCols}, RandomBytes(DType::kBF16, kRows * kCols, rng)}})
          .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto load = [&](std::vector<float>* out) {
    WeightLoader loader(**ckpt, *cpu_, Options(2, 1 << 20, DirectIo::kAuto));
    out->assign(kRows * kCols, 0);
    EXPECT_TRUE(loader.Add("w", 0, 0, -1, out->size(), DType::kF32, out->data()).ok());
    EXPECT_TRUE(loader.Run().ok());
    return loader.stats().direct_bytes;
  };
  std::vector<float> cached, evicted, want(kRows * kCols);
  EXPECT_EQ(load(&cached), 0u);
  const int fd = ::open((dir + "/model.safetensors").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  const uint64_t direct = load(&evicted);
  // Last: ReadFloat reads through the mapping, and mapped pages cannot be evicted.
  ASSERT_TRUE((*ckpt)->ReadFloat("w", 0, 0, -1, want.data()).ok());
  EXPECT_EQ(cached, want);
  EXPECT_EQ(evicted, want);
  if (direct == 0) GTEST_SKIP() << "the page cache kept the file (eviction refused)";
  EXPECT_EQ(direct, static_cast<uint64_t>(kRows * kCols * 2));
}

class TruncatedShardTest : public WeightLoaderTest,
                           public ::testing::WithParamInterface<DirectIo> {};

TEST_P(TruncatedShardTest, ShardTruncatedAfterOpeningFailsRunNamingFileAndTensor) {
  if (GetParam() == DirectIo::kOn && !DirectAllowed(dir_)) GTEST_SKIP() << "no O_DIRECT here";
  WeightLoader loader(*ckpt_, *cpu_, Options(2, 64, GetParam()));
  std::vector<DeviceBuffer> out;
  for (const char* name : {"a.bf16", "c.f32", "d.f8"}) {
    const auto entry = ckpt_->Find(name);
    ASSERT_TRUE(entry.ok());
    const int64_t count = entry->info->num_elements();
    out.push_back(cpu_->Allocate(count * sizeof(float)));
    ASSERT_TRUE(loader.Add(name, 0, 0, -1, count, DType::kF32, out.back().data()).ok());
  }
  // Shard 2 (c.f32 then d.f8) loses its last 100 bytes: d.f8's tail. The mapping is never read.
  const std::string path = dir_ + "/" + Shard(1);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  const auto size = static_cast<off_t>(in.tellg());
  ASSERT_EQ(::truncate(path.c_str(), size - 100), 0);
  const absl::Status status = loader.Run();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr(path));
  EXPECT_THAT(status.message(), HasSubstr("\"d.f8\""));
  EXPECT_THAT(status.message(), HasSubstr("truncated"));
}

INSTANTIATE_TEST_SUITE_P(ReadPaths, TruncatedShardTest,
                         ::testing::Values(DirectIo::kOff, DirectIo::kOn), [](const auto& info) {
                           return info.param == DirectIo::kOn ? "Direct" : "Buffered";
                         });

}  // namespace
}  // namespace tessera
