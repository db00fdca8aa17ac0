// safetensors headers, files and checkpoint directories: every malformed input named in
// safetensors.h is rejected with the right code and a message naming the file (and tensor);
// values read back match for every dtype and for slices along each dimension of an odd-sized
// 3-D tensor; files written by the Python `safetensors` / `huggingface_hub` packages load.
#include "runtime/model/safetensors.h"

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace tessera {
namespace {

std::string Msg(const absl::Status& status) { return std::string(status.message()); }

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::StatusCode kDataLoss = absl::StatusCode::kDataLoss;
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kNotFound = absl::StatusCode::kNotFound;
const std::string kFixtures = std::string(TESSERA_SOURCE_DIR) + "/tests/data/safetensors/";

// ---- a tiny writer ------------------------------------------------------------------------------

std::string LengthPrefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return prefix;
}

// A file image with a given header text and data region.
std::string Image(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Tensors back to back in the given order, as a real writer lays them out.
std::string BuildImage(const std::vector<Tensor>& tensors, const json& metadata = nullptr) {
  json header = json::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string data;
  for (const Tensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the reference writer pads to 8 with spaces
  return Image(text, data);
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// ctest runs every test as its own process, in parallel: each process gets its own scratch
// directory, removed when the process exits.
const std::string& ScratchRoot() {
  static const struct Root {
    std::string path = ::testing::TempDir() + "/safetensors_test." + std::to_string(::getpid());
    ~Root() {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    }
  } root;
  return root.path;
}

// A fresh, empty directory under the scratch root.
std::string FreshDir(const std::string& name) {
  const std::string dir = ScratchRoot() + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

absl::Status ParseImage(const std::string& image) {
  return ParseSafetensorsImage(
             absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(image.data()), image.size()),
             "bad.safetensors")
      .status();
}

// ---- malformed headers ------------------------------------------------------------------------

struct BadHeader {
  const char* header;
  size_t data_size;
  absl::StatusCode code;
  const char* name;    // the tensor (or key) the message must name, quoted; "" if none
  const char* detail;  // another substring the message must contain
};
void PrintTo(const BadHeader& bad, std::ostream* os) { *os << bad.header; }

// A test name from the start of a string, e.g. "dtype_is_missing_5" (ctest shows these).
std::string NameFrom(const char* text, size_t index) {
  std::string name;
  for (const char* p = text; *p != '\0' && name.size() < 40; ++p) {
    if (std::isalnum(static_cast<unsigned char>(*p))) {
      name += *p;
    } else if (!name.empty() && name.back() != '_') {
      name += '_';
    }
  }
  if (!name.empty() && name.back() != '_') name += '_';
  return name + std::to_string(index);
}

class BadHeaderTest : public ::testing::TestWithParam<BadHeader> {};

TEST_P(BadHeaderTest, RejectedWithAPreciseError) {
  const BadHeader& bad = GetParam();
  const absl::Status status = ParseImage(Image(bad.header, std::string(bad.data_size, '\0')));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), bad.code) << status;
  EXPECT_THAT(Msg(status), StartsWith("bad.safetensors: "));
  EXPECT_THAT(Msg(status), HasSubstr(bad.name));
  EXPECT_THAT(Msg(status), HasSubstr(bad.detail));
}

#define F32_2(offsets) R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": )" offsets "}}"

INSTANTIATE_TEST_SUITE_P(
    Headers, BadHeaderTest,
    ::testing::Values(
        BadHeader{"", 0, kDataLoss, "", "invalid JSON"},
        BadHeader{"{\"w\": ", 0, kDataLoss, "", "invalid JSON"},
        BadHeader{"[]", 0, kDataLoss, "", "the header must be a JSON object, got an array"},
        BadHeader{R"({"w": 5})", 0, kDataLoss, "tensor \"w\"", "entry must be an object, got 5"},
        BadHeader{R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8, kDataLoss, "tensor \"w\"",
                  "\"dtype\" is missing"},
        BadHeader{R"({"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", 8, kDataLoss,
                  "tensor \"w\"", "\"dtype\" must be a string, got 5"},
        BadHeader{R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8, kInvalid,
                  "tensor \"w\"", "dtype \"F64\" is not supported"},
        BadHeader{R"({"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 8]}})", 8, kInvalid,
                  "tensor \"w\"", "dtype \"Q4_K\" is not supported"},
        BadHeader{R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8, kDataLoss,
                  "tensor \"w\"", "\"shape\" is missing"},
        BadHeader{R"({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8, kDataLoss,
                  "tensor \"w\"", "\"shape\" must be a list of dimensions, got \"2\""},
        BadHeader{R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8, kDataLoss,
                  "tensor \"w\"", "non-negative integers, got -2"},
        BadHeader{R"({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8,
                  kDataLoss, "tensor \"w\"", "got 2.0"},
        BadHeader{R"({"w": {"dtype": "F32", "shape": [[2]], "data_offsets": [0, 8]}})", 8,
                  kDataLoss, "tensor \"w\"", "integers, got [2]"},
        BadHeader{
            R"({"w": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 8]}})", 8,
            kDataLoss, "tensor \"w\"", "got 9223372036854775808"},
        BadHeader{R"({"w": {"dtype": "F32", "shape": [2]}})", 8, kDataLoss, "tensor \"w\"",
                  "\"data_offsets\" is missing"},
        BadHeader{F32_2("[0]"), 8, kDataLoss, "tensor \"w\"",
                  "\"data_offsets\" must be [begin, end] with non-negative integers, got [0]"},
        BadHeader{F32_2("[0, -8]"), 8, kDataLoss, "tensor \"w\"", "got [0, -8]"},
        BadHeader{F32_2("[0, 8.0]"), 8, kDataLoss, "tensor \"w\"", "got [0, 8.0]"},
        BadHeader{F32_2("\"0:8\""), 8, kDataLoss, "tensor \"w\"", "got \"0:8\""},
        BadHeader{F32_2("[0, 8, 16]"), 16, kDataLoss, "tensor \"w\"", "got [0, 8, 16]"},
        BadHeader{F32_2("[8, 0]"), 8, kDataLoss, "tensor \"w\"",
                  "data_offsets [8, 0] begin after they end"},
        BadHeader{F32_2("[0, 8]"), 4, kDataLoss, "tensor \"w\"",
                  "data_offsets [0, 8] end past the data region (4 bytes"},
        BadHeader{F32_2("[0, 18446744073709551615]"), 8, kDataLoss, "tensor \"w\"",
                  "end past the data region"},
        BadHeader{F32_2("[0, 12]"), 12, kDataLoss, "tensor \"w\"",
                  "span 12 bytes, but shape [2] of F32 needs 8"},
        // 2^32 x 2^32 elements wrap to exactly 0: without checked multiplication the empty span
        // would match.
        BadHeader{
            R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
            0, kDataLoss, "tensor \"w\"", "overflows a 64-bit byte count"},
        // 2^62 elements fit, 2^62 x 4 bytes do not.
        BadHeader{
            R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0,
            kDataLoss, "tensor \"w\"", "overflows"},
        // 2^63 - 1 x 2 elements fit in uint64 but not in the int64 element count.
        BadHeader{
            R"({"w": {"dtype": "F8_E4M3", "shape": [9223372036854775807, 2], "data_offsets": [0, 0]}})",
            0, kDataLoss, "tensor \"w\"", "overflows"},
        // Layout: overlap, duplicates, gaps, trailing bytes.
        BadHeader{R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  12, kDataLoss, "tensor \"b\" (bytes [4, 12)) overlaps tensor \"a\"",
                  "(bytes [0, 8))"},
        BadHeader{R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
                  8, kDataLoss, "tensor \"b\"", "overlaps tensor \"a\""},
        BadHeader{R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "z": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
                  8, kDataLoss, "tensor \"z\"", "overlaps tensor \"a\""},
        BadHeader{R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}})",
                  16, kDataLoss, "tensor \"b\"", "bytes [8, 12) of the data region belong to no"},
        BadHeader{R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12,
                  kDataLoss, "tensor \"a\"", "bytes [0, 4)"},
        BadHeader{F32_2("[0, 8]"), 12, kDataLoss, "",
                  "the data region is 12 bytes but its tensors cover 8"},
        BadHeader{"{}", 4, kDataLoss, "", "the data region is 4 bytes but its tensors cover 0"},
        // A name given twice: JSON parsers keep one entry, which would hide the other.
        BadHeader{R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                  8, kDataLoss, "\"w\"", "more than once"},
        // Metadata.
        BadHeader{R"({"__metadata__": 5})", 0, kDataLoss, "\"__metadata__\"",
                  "must be an object of strings, got 5"},
        BadHeader{R"({"__metadata__": {"format": 1}})", 0, kDataLoss,
                  "\"__metadata__\" value \"format\"", "must be a string, got 1"}));

TEST(SafetensorsImageTest, LengthPrefixIsCheckedBeforeAnythingElse) {
  for (size_t size = 0; size < 8; ++size) {
    const absl::Status status = ParseImage(std::string(size, '\x01'));
    EXPECT_EQ(status.code(), kDataLoss);
    EXPECT_THAT(Msg(status), StartsWith("bad.safetensors: "));
    EXPECT_THAT(Msg(status), HasSubstr("too short"));
  }
  // Absurd lengths are refused without allocating: nothing is sized by them.
  for (uint64_t n : {kMaxSafetensorsHeaderSize + 1, uint64_t{1} << 63, ~uint64_t{0}}) {
    const absl::Status status = ParseImage(LengthPrefix(n) + "{}");
    EXPECT_EQ(status.code(), kDataLoss);
    EXPECT_THAT(Msg(status), HasSubstr("is above the limit"));
  }
  const absl::Status past = ParseImage(LengthPrefix(1000) + std::string(42, ' '));
  EXPECT_EQ(past.code(), kDataLoss);
  EXPECT_THAT(Msg(past), HasSubstr("header length 1000 runs past the end of the file (50 bytes"));
}

TEST(SafetensorsImageTest, DeepNestingIsRefusedBeforeParsing) {
  const std::string deep = "{\"w\": " + std::string(500000, '[') + std::string(500000, ']') + "}";
  const absl::Status status = ParseImage(Image(deep, ""));
  EXPECT_EQ(status.code(), kDataLoss);
  EXPECT_EQ(Msg(status), "bad.safetensors: invalid JSON: nested deeper than 128 levels");
}

TEST(SafetensorsImageTest, AcceptsWhatTheReferenceAccepts) {
  // Empty header, zero-sized tensors at the edges, a 0-d tensor, extra keys, metadata null,
  // huge dimensions multiplied by zero, whitespace around the header.
  const std::string header = R"( {"__metadata__": null,
      "empty_first": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
      "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4], "extra": [1, 2]},
      "zero": {"dtype": "BF16", "shape": [4294967296, 4294967296, 0], "data_offsets": [4, 4]},
      "v": {"dtype": "I64", "shape": [1], "data_offsets": [4, 12]}}    )";
  const std::string image = Image(header, std::string(12, '\0'));
  auto parsed = ParseSafetensorsImage(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(image.data()), image.size()), "ok");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->data_offset, 8 + header.size());
  const auto& tensors = parsed->header.tensors;
  ASSERT_EQ(tensors.size(), 4u);
  // File order: by offset, then name.
  EXPECT_EQ(tensors[0].name, "empty_first");
  EXPECT_EQ(tensors[1].name, "s");
  EXPECT_EQ(tensors[2].name, "zero");
  EXPECT_EQ(tensors[3].name, "v");
  EXPECT_EQ(tensors[1].num_elements(), 1);
  EXPECT_EQ(tensors[2].num_elements(), 0);
  EXPECT_EQ(tensors[3].dtype, DType::kI64);
  EXPECT_TRUE(parsed->header.metadata.empty());

  EXPECT_TRUE(ParseImage(Image("{}", "")).ok());

  // Reading an empty tensor whose other dimensions multiply past int64 touches nothing.
  const std::string dir = FreshDir("huge_empty");
  WriteFile(dir + "/model.safetensors", image);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (int dim = 0; dim < 3; ++dim) {
    EXPECT_TRUE((*ckpt)->ReadFloat("zero", dim, 0, dim == 2 ? 0 : 1, nullptr).ok()) << dim;
  }
  // Padding with NULs instead of spaces is not JSON (the reference rejects it too).
  EXPECT_EQ(ParseImage(Image(std::string("{}\0\0", 4), "")).code(), kDataLoss);
}

// ---- files --------------------------------------------------------------------------------------

TEST(SafetensorsFileTest, OpenErrorsNameTheFile) {
  const std::string dir = FreshDir("open_errors");
  auto missing = SafetensorsFile::Open(dir + "/missing.safetensors");
  EXPECT_EQ(missing.status().code(), kNotFound);
  EXPECT_THAT(Msg(missing.status()), HasSubstr(dir + "/missing.safetensors"));

  EXPECT_EQ(SafetensorsFile::Open(dir).status().code(), kInvalid);  // a directory

  WriteFile(dir + "/empty.safetensors", "");
  auto empty = SafetensorsFile::Open(dir + "/empty.safetensors");
  EXPECT_EQ(empty.status().code(), kDataLoss);
  EXPECT_THAT(Msg(empty.status()), StartsWith(dir + "/empty.safetensors: 0 bytes"));

  // A download cut short: the header promises more data than there is.
  const std::string good = BuildImage({{"layer.weight", "F32", {4, 4}, std::string(64, '\0')}});
  WriteFile(dir + "/truncated.safetensors", good.substr(0, good.size() - 10));
  auto truncated = SafetensorsFile::Open(dir + "/truncated.safetensors");
  EXPECT_EQ(truncated.status().code(), kDataLoss);
  EXPECT_THAT(Msg(truncated.status()),
              StartsWith(dir + "/truncated.safetensors: tensor \"layer.weight\": "));
  EXPECT_THAT(Msg(truncated.status()), HasSubstr("end past the data region"));

  WriteFile(dir + "/cut_header.safetensors", good.substr(0, 20));
  auto cut = SafetensorsFile::Open(dir + "/cut_header.safetensors");
  EXPECT_EQ(cut.status().code(), kDataLoss);
  EXPECT_THAT(Msg(cut.status()), HasSubstr("runs past the end of the file"));
}

TEST(SafetensorsFileTest, IndexesNamesAndMetadata) {
  const std::string dir = FreshDir("file_index");
  WriteFile(dir + "/m.safetensors",
            BuildImage({{"b", "F32", {1}, Bytes(std::vector<float>{2.5f})},
                        {"a", "I32", {2}, Bytes(std::vector<int32_t>{-7, 9})}},
                       {{"format", "pt"}, {"note", "x"}}));
  auto file = SafetensorsFile::Open(dir + "/m.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), dir + "/m.safetensors");
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
  EXPECT_EQ((*file)->header().metadata.at("note"), "x");
  EXPECT_EQ((*file)->Find("c"), nullptr);
  const TensorInfo* a = (*file)->Find("a");
  ASSERT_NE(a, nullptr);
  int32_t ints[2];
  std::memcpy(ints, (*file)->Data(*a), sizeof(ints));
  EXPECT_EQ(ints[0], -7);
  EXPECT_EQ(ints[1], 9);
}

// ---- values and slices --------------------------------------------------------------------------

// A [3, 5, 7] tensor of `dtype` with random values; `expect` receives their float values.
Tensor RandomTensor(const std::string& name, DType dtype, std::vector<float>* expect) {
  const std::vector<int64_t> shape = {3, 5, 7};
  const int n = 3 * 5 * 7;
  std::mt19937 rng(static_cast<unsigned>(dtype) + 11);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  expect->clear();
  std::string bytes;
  for (int i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kF32: {
        const float f = dist(rng);
        expect->push_back(f);
        bytes.append(reinterpret_cast<const char*>(&f), 4);
        break;
      }
      case DType::kBF16: {
        const uint16_t b = FloatToBF16(dist(rng));
        expect->push_back(BF16ToFloat(b));
        bytes.append(reinterpret_cast<const char*>(&b), 2);
        break;
      }
      case DType::kF16: {
        const uint16_t h = FloatToF16(dist(rng));
        expect->push_back(F16ToFloat(h));
        bytes.append(reinterpret_cast<const char*>(&h), 2);
        break;
      }
      case DType::kF8E4M3: {
        uint8_t b = static_cast<uint8_t>(rng());
        if ((b & 0x7f) == 0x7f) b &= 0xf0;  // not NaN, so values compare equal
        expect->push_back(F8E4M3ToFloat(b));
        bytes.push_back(static_cast<char>(b));
        break;
      }
      default:
        ADD_FAILURE();
    }
  }
  return Tensor{name, std::string(DTypeName(dtype)), shape, bytes};
}

// The slice [start, start + length) along `dim` of a [3, 5, 7] tensor, by plain index loops.
std::vector<float> ReferenceSlice(const std::vector<float>& full, int dim, int64_t start,
                                  int64_t length) {
  const int64_t shape[3] = {3, 5, 7};
  std::vector<float> out;
  for (int64_t i = 0; i < shape[0]; ++i) {
    for (int64_t j = 0; j < shape[1]; ++j) {
      for (int64_t k = 0; k < shape[2]; ++k) {
        const int64_t index[3] = {i, j, k};
        if (index[dim] < start || index[dim] >= start + length) continue;
        out.push_back(full[(i * 5 + j) * 7 + k]);
      }
    }
  }
  return out;
}

TEST(CheckpointReadTest, EveryFloatDtypeAndEverySliceDimension) {
  const std::string dir = FreshDir("slices");
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3};
  std::vector<Tensor> tensors;
  std::vector<std::vector<float>> expect(4);
  for (int t = 0; t < 4; ++t) {
    tensors.push_back(
        RandomTensor("t." + std::string(DTypeName(dtypes[t])), dtypes[t], &expect[t]));
  }
  WriteFile(dir + "/model.safetensors", BuildImage(tensors));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int64_t shape[3] = {3, 5, 7};
  for (int t = 0; t < 4; ++t) {
    const std::string& name = tensors[t].name;
    std::vector<float> whole(105, -1.0f);
    ASSERT_TRUE((*ckpt)->ReadFloat(name, whole.data()).ok());
    EXPECT_EQ(whole, expect[t]) << name;
    for (int dim = 0; dim < 3; ++dim) {
      for (int64_t start = 0; start <= shape[dim]; ++start) {
        for (int64_t length = -1; start + length <= shape[dim]; ++length) {
          const int64_t real_length = length < 0 ? shape[dim] - start : length;
          const std::vector<float> want = ReferenceSlice(expect[t], dim, start, real_length);
          std::vector<float> got(want.size() + 1, 12345.0f);  // one guard element
          const absl::Status status = (*ckpt)->ReadFloat(name, dim, start, length, got.data());
          ASSERT_TRUE(status.ok()) << status;
          EXPECT_EQ(got.back(), 12345.0f) << "wrote past the slice";
          got.pop_back();
          EXPECT_EQ(got, want) << name << " dim " << dim << " [" << start << ", +" << length << ")";
        }
      }
    }
  }
}

TEST(CheckpointReadTest, BadRequestsNameTheTensor) {
  const std::string dir = FreshDir("bad_requests");
  std::vector<float> unused;
  WriteFile(dir + "/model.safetensors",
            BuildImage({RandomTensor("w", DType::kBF16, &unused),
                        {"ids", "I64", {2}, Bytes(std::vector<int64_t>{1, 2})},
                        {"one", "F32", {}, Bytes(std::vector<float>{4.5f})}}));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<float> dst(200);
  struct Case {
    int dim;
    int64_t start, length;
    const char* detail;
  };
  for (const Case& c : {Case{-1, 0, -1, "dimension -1 is out of range"},
                        Case{3, 0, -1, "dimension 3 is out of range"},
                        Case{0, -1, 1, "slice start -1 is outside dimension 0 (size 3)"},
                        Case{1, 6, -1, "slice start 6 is outside dimension 1 (size 5)"},
                        Case{2, 3, 5, "slice [3, 3 + 5) runs past dimension 2 (size 7)"},
                        Case{2, 0, INT64_MAX, "runs past dimension 2"}}) {
    const absl::Status status = (*ckpt)->ReadFloat("w", c.dim, c.start, c.length, dst.data());
    EXPECT_EQ(status.code(), kInvalid) << status;
    EXPECT_THAT(Msg(status), StartsWith("tensor \"w\" (" + dir +
                                        "/model.safetensors, BF16 "
                                        "[3, 5, 7]): "));
    EXPECT_THAT(Msg(status), HasSubstr(c.detail));
  }
  const absl::Status ints = (*ckpt)->ReadFloat("ids", dst.data());
  EXPECT_EQ(ints.code(), kInvalid);
  EXPECT_THAT(Msg(ints), HasSubstr("tensor \"ids\""));
  EXPECT_THAT(Msg(ints), HasSubstr("integer tensor cannot be read as float"));

  const absl::Status unknown = (*ckpt)->ReadFloat("nope", dst.data());
  EXPECT_EQ(unknown.code(), kNotFound);
  EXPECT_THAT(Msg(unknown), HasSubstr("tensor \"nope\" is not in checkpoint " + dir));

  // A 0-d tensor reads as shape [1]; an empty slice touches nothing, even a null destination.
  ASSERT_TRUE((*ckpt)->ReadFloat("one", dst.data()).ok());
  EXPECT_EQ(dst[0], 4.5f);
  EXPECT_TRUE((*ckpt)->ReadFloat("w", 1, 5, -1, nullptr).ok());
  EXPECT_EQ((*ckpt)->ReadFloat("w", 1, 0, -1, nullptr).code(), kInvalid);
}

// ---- files written by the Python packages (tests/data/make_input_fixtures.py) ------------------

// The values make_input_fixtures.py writes: multiples of 1/4, exact in every float dtype.
float FixtureValue(int tensor_index, int64_t i) {
  return static_cast<float>(((i * 7 + tensor_index * 3) % 17 - 8) * 0.25);
}

TEST(PythonFixtureTest, SingleFileFromSafetensorsTorch) {
  auto ckpt = Checkpoint::Open(kFixtures + "single");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->TensorNames(),
            (std::vector<std::string>{"bf16.3d", "f16.2d", "f32.3d", "f32.empty", "f32.scalar",
                                      "f8.2d", "i32.1d", "i64.1d"}));
  struct Expect {
    const char* name;
    int index;  // position in make_input_fixtures.py's SINGLE
    DType dtype;
    std::vector<int64_t> shape;
  };
  for (const Expect& e :
       {Expect{"bf16.3d", 0, DType::kBF16, {3, 5, 7}}, Expect{"f16.2d", 1, DType::kF16, {4, 3}},
        Expect{"f32.3d", 2, DType::kF32, {2, 3, 5}}, Expect{"f8.2d", 3, DType::kF8E4M3, {5, 6}},
        Expect{"f32.scalar", 6, DType::kF32, {}}, Expect{"f32.empty", 7, DType::kF32, {0, 4}}}) {
    SCOPED_TRACE(e.name);
    auto entry = (*ckpt)->Find(e.name);
    ASSERT_TRUE(entry.ok()) << entry.status();
    EXPECT_EQ(entry->info->dtype, e.dtype);
    EXPECT_EQ(entry->info->shape, e.shape);
    EXPECT_EQ(entry->file->header().metadata.at("format"), "pt");
    const int64_t n = entry->info->num_elements();
    std::vector<float> got(n);
    ASSERT_TRUE((*ckpt)->ReadFloat(e.name, got.data()).ok());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(got[i], FixtureValue(e.index, i)) << i;
  }
  // Integer tensors: raw values through Data(); ReadFloat refuses them.
  auto i32 = (*ckpt)->Find("i32.1d");
  ASSERT_TRUE(i32.ok());
  std::vector<int32_t> ints(4);
  std::memcpy(ints.data(), i32->file->Data(*i32->info), 16);
  EXPECT_EQ(ints, (std::vector<int32_t>{-28, 1000003 - 28, 2000006 - 28, 3000009 - 28}));
  auto i64 = (*ckpt)->Find("i64.1d");
  ASSERT_TRUE(i64.ok());
  std::vector<int64_t> longs(3);
  std::memcpy(longs.data(), i64->file->Data(*i64->info), 24);
  EXPECT_EQ(longs, (std::vector<int64_t>{-35, 1000003 - 35, 2000006 - 35}));
}

const std::vector<std::string> kShardedNames = {
    "model.embed_tokens.weight",           "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight", "model.norm.weight"};

TEST(PythonFixtureTest, ShardedFromHuggingfaceHub) {
  auto ckpt = Checkpoint::Open(kFixtures + "sharded");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<std::string> sorted = kShardedNames;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ((*ckpt)->TensorNames(), sorted);
  for (int k = 0; k < static_cast<int>(kShardedNames.size()); ++k) {
    auto entry = (*ckpt)->Find(kShardedNames[k]);
    ASSERT_TRUE(entry.ok()) << entry.status();
    EXPECT_EQ(entry->info->dtype, DType::kBF16);
    std::vector<float> got(entry->info->num_elements());
    ASSERT_TRUE((*ckpt)->ReadFloat(kShardedNames[k], got.data()).ok());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], FixtureValue(k, i));
  }
  EXPECT_THAT((*ckpt)->Find("model.norm.weight")->file->path(),
              HasSubstr("model-00003-of-00003.safetensors"));
  // A vocab-parallel slice of the [11, 8] embedding: rows 4..7.
  std::vector<float> rows(4 * 8);
  ASSERT_TRUE((*ckpt)->ReadFloat("model.embed_tokens.weight", 0, 4, 4, rows.data()).ok());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(rows[i], FixtureValue(0, 32 + i));
  // A row-parallel slice of the [8, 12] down_proj: columns 6..11.
  std::vector<float> cols(8 * 6);
  ASSERT_TRUE(
      (*ckpt)->ReadFloat("model.layers.0.mlp.down_proj.weight", 1, 6, -1, cols.data()).ok());
  for (int r = 0; r < 8; ++r) {
    for (int c = 0; c < 6; ++c) EXPECT_EQ(cols[r * 6 + c], FixtureValue(2, r * 12 + 6 + c));
  }
}

// A copy of the sharded fixture to break.
std::string CopyOfSharded(const std::string& name) {
  const std::string dir = FreshDir(name);
  for (const auto& entry : fs::directory_iterator(kFixtures + "sharded")) {
    fs::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
  }
  return dir;
}

TEST(CheckpointTest, ShardsAreMappedLazily) {
  const std::string dir = CopyOfSharded("lazy");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // Shards 2 and 3 go bad after Open: a rank that only needs shard 1 never notices.
  const std::string shard2 = dir + "/model-00002-of-00003.safetensors";
  const std::string shard3 = dir + "/model-00003-of-00003.safetensors";
  fs::resize_file(shard2, 30);
  fs::remove(shard3);
  std::vector<float> dst(128);
  EXPECT_TRUE((*ckpt)->ReadFloat("model.embed_tokens.weight", dst.data()).ok());
  EXPECT_TRUE((*ckpt)->ReadFloat("model.layers.0.self_attn.q_proj.weight", dst.data()).ok());
  const absl::Status bad = (*ckpt)->ReadFloat("model.layers.1.self_attn.q_proj.weight", dst.data());
  EXPECT_EQ(bad.code(), kDataLoss);
  EXPECT_THAT(Msg(bad), StartsWith(shard2 + ": "));
  const absl::Status gone = (*ckpt)->ReadFloat("model.norm.weight", dst.data());
  EXPECT_EQ(gone.code(), kNotFound);
  EXPECT_THAT(Msg(gone), StartsWith(shard3 + ": "));
}

TEST(CheckpointTest, ConcurrentFirstReadsOpenEachShardOnce) {
  auto ckpt = Checkpoint::Open(kFixtures + "sharded");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        for (int k = 0; k < static_cast<int>(kShardedNames.size()); ++k) {
          const int which = (k + t) % static_cast<int>(kShardedNames.size());
          std::vector<float> got(128);
          if (!(*ckpt)->ReadFloat(kShardedNames[which], got.data()).ok() ||
              got[1] != FixtureValue(which, 1)) {
            ++failures[t];
          }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
  // Every Entry for one shard points at the same SafetensorsFile.
  EXPECT_EQ((*ckpt)->Find(kShardedNames[0])->file, (*ckpt)->Find(kShardedNames[1])->file);
}

// ---- checkpoint directories: layouts and bad indexes
// ---------------------------------------------

std::string OneTensorFile(const std::string& name, float value) {
  return BuildImage({{name, "F32", {1}, Bytes(std::vector<float>{value})}});
}

TEST(CheckpointTest, DirectoryLayouts) {
  auto missing = Checkpoint::Open("/nonexistent/ckpt");
  EXPECT_EQ(missing.status().code(), kNotFound);
  EXPECT_THAT(Msg(missing.status()), HasSubstr("/nonexistent/ckpt"));

  const std::string empty = FreshDir("layout_empty");
  WriteFile(empty + "/config.json", "{}");
  auto none = Checkpoint::Open(empty);
  EXPECT_EQ(none.status().code(), kNotFound);
  EXPECT_THAT(Msg(none.status()), StartsWith(empty + ": no model.safetensors.index.json"));

  // No index, no model.safetensors: every *.safetensors, in name order.
  const std::string loose = FreshDir("layout_loose");
  WriteFile(loose + "/b.safetensors", OneTensorFile("y", 2.0f));
  WriteFile(loose + "/a.safetensors", OneTensorFile("x", 1.0f));
  WriteFile(loose + "/notes.txt", "not a tensor file");
  auto both = Checkpoint::Open(loose);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ((*both)->TensorNames(), (std::vector<std::string>{"x", "y"}));
  float value = 0;
  ASSERT_TRUE((*both)->ReadFloat("y", &value).ok());
  EXPECT_EQ(value, 2.0f);

  WriteFile(loose + "/c.safetensors", OneTensorFile("x", 3.0f));
  auto duplicate = Checkpoint::Open(loose);
  EXPECT_EQ(duplicate.status().code(), kDataLoss);
  EXPECT_THAT(Msg(duplicate.status()),
              HasSubstr("tensor \"x\" is in both a.safetensors and c.safetensors"));

  // model.safetensors wins over other files.
  WriteFile(loose + "/model.safetensors", OneTensorFile("z", 5.0f));
  auto single = Checkpoint::Open(loose);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->TensorNames(), std::vector<std::string>{"z"});
  EXPECT_FALSE((*single)->Contains("x"));
  EXPECT_TRUE((*single)->Contains("z"));

  // A broken single file fails Open, naming it.
  WriteFile(loose + "/model.safetensors", "garbage!garbage!");
  auto broken = Checkpoint::Open(loose);
  EXPECT_EQ(broken.status().code(), kDataLoss);
  EXPECT_THAT(Msg(broken.status()), StartsWith(loose + "/model.safetensors: "));
}

struct BadIndex {
  const char* index;
  absl::StatusCode code;
  const char* detail;
};
void PrintTo(const BadIndex& bad, std::ostream* os) { *os << bad.index; }

class BadIndexTest : public ::testing::TestWithParam<BadIndex> {};

TEST_P(BadIndexTest, OpenFailsNamingTheIndex) {
  const std::string dir = FreshDir("bad_index");
  WriteFile(dir + "/model-1.safetensors", OneTensorFile("w", 1.0f));
  WriteFile(dir + "/model.safetensors.index.json", GetParam().index);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), GetParam().code) << ckpt.status();
  EXPECT_THAT(Msg(ckpt.status()), HasSubstr(dir + "/"));
  EXPECT_THAT(Msg(ckpt.status()), HasSubstr(GetParam().detail));
}

INSTANTIATE_TEST_SUITE_P(
    Indexes, BadIndexTest,
    ::testing::Values(
        BadIndex{"{\"weight_map\": {", kDataLoss, "model.safetensors.index.json: invalid JSON"},
        BadIndex{"[]", kDataLoss,
                 "\"weight_map\" must be an object mapping tensor names to "
                 "shard files, got an array"},
        BadIndex{R"({"metadata": {}})", kDataLoss, "\"weight_map\" must be an object"},
        BadIndex{R"({"weight_map": ["model-1.safetensors"]})", kDataLoss,
                 "got [\"model-1.safetensors\"]"},
        BadIndex{R"({"weight_map": {}})", kDataLoss, "\"weight_map\" names no tensors"},
        BadIndex{R"({"weight_map": {"w": 1}})", kDataLoss,
                 "\"weight_map\" entry for tensor \"w\" must be a file name in"},
        BadIndex{R"({"weight_map": {"w": "../model-1.safetensors"}})", kDataLoss,
                 "got \"../model-1.safetensors\""},
        BadIndex{R"({"weight_map": {"w": ""}})", kDataLoss, "entry for tensor \"w\""},
        BadIndex{R"({"weight_map": {"w": "model-1.safetensors",
                                    "v": "model-2.safetensors", "u": "model-2.safetensors"}})",
                 kNotFound,
                 "model-2.safetensors: shard file is missing (model.safetensors.index.json "
                 "places tensor \"u\" and 1 more in it)"}),
    [](const ::testing::TestParamInfo<BadIndex>& info) {
      return NameFrom(info.param.detail, info.index);
    });

TEST(CheckpointTest, TensorListedInIndexButAbsentFromShard) {
  const std::string dir = FreshDir("index_lies");
  WriteFile(dir + "/model-1.safetensors", OneTensorFile("w", 1.0f));
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"w": "model-1.safetensors", "ghost": "model-1.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();  // shards are only checked when mapped
  EXPECT_TRUE((*ckpt)->Contains("ghost"));
  float value;
  for (const char* name : {"w", "ghost"}) {  // either read maps the shard and finds the lie
    const absl::Status status = (*ckpt)->ReadFloat(name, &value);
    EXPECT_EQ(status.code(), kDataLoss);
    EXPECT_EQ(Msg(status), dir +
                               "/model-1.safetensors: has no tensor \"ghost\", but "
                               "model.safetensors.index.json places it in this file");
  }
  EXPECT_EQ((*ckpt)->ReadFloat("other", &value).code(), kNotFound);
}

}  // namespace
}  // namespace tessera
