// safetensors: header validation (pure, fuzzed), memory-mapped files, checkpoint directories and
// float32 slice reads. See safetensors.h for the rules enforced and the error codes.
#include "runtime/model/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/string_view.h"
#include "runtime/model/json_text.h"
#include "runtime/model/load_progress.h"

namespace tessera {
namespace {

using json = nlohmann::json;

constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kSingleFile[] = "model.safetensors";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads a non-negative JSON integer that fits in uint64 (and, when `max` says so, less).
bool GetUnsigned(const json& value, uint64_t max, uint64_t* out) {
  if (!value.is_number_integer()) return false;
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
  } else {
    const int64_t v = value.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
  }
  return *out <= max;
}

// Validates one tensor entry of the header; everything but the layout rule, which needs them all.
absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& name, const json& entry,
                                            uint64_t data_size, std::string_view file_name) {
  auto corrupt = [&](auto&&... parts) {
    return absl::DataLossError(
        absl::StrCat(AbslView(file_name), ": tensor \"", name, "\": ", parts...));
  };
  if (!entry.is_object()) return corrupt("entry must be an object, got ", DescribeJson(entry));
  TensorInfo info;
  info.name = name;

  const auto dtype = entry.find("dtype");
  if (dtype == entry.end()) return corrupt("\"dtype\" is missing");
  if (!dtype->is_string()) return corrupt("\"dtype\" must be a string, got ", DescribeJson(*dtype));
  if (!ParseDTypeName(dtype->get_ref<const std::string&>(), &info.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(file_name), ": tensor \"", name, "\": dtype ", DescribeJson(*dtype),
                     " is not supported (tessera reads BF16, F16, F32, F8_E4M3, I32 and I64)"));
  }

  const auto shape = entry.find("shape");
  if (shape == entry.end()) return corrupt("\"shape\" is missing");
  if (!shape->is_array()) {
    return corrupt("\"shape\" must be a list of dimensions, got ", DescribeJson(*shape));
  }
  // NOTE: the element count and byte size are computed with overflow checks, so a hostile shape
  // cannot wrap around to match a small span.
  uint64_t count = 1;
  bool overflow = false, has_zero = false;
  for (const json& dim : *shape) {
    uint64_t d = 0;
    if (!GetUnsigned(dim, std::numeric_limits<int64_t>::max(), &d)) {
      return corrupt("\"shape\" dimensions must be non-negative integers, got ", DescribeJson(dim));
    }
    info.shape.push_back(static_cast<int64_t>(d));
    has_zero = has_zero || d == 0;
    overflow = overflow || __builtin_mul_overflow(count, d, &count);
  }
  uint64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(count, DTypeSize(info.dtype), &bytes) ||
             count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (has_zero) {  // the product is 0, whatever overflowed before the zero
    overflow = false;
    bytes = 0;
  }
  if (overflow) {
    return corrupt("shape ", ShapeString(info.shape), " of ", AbslView(DTypeName(info.dtype)),
                   " overflows a 64-bit byte count");
  }

  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end()) return corrupt("\"data_offsets\" is missing");
  if (!offsets->is_array() || offsets->size() != 2 ||
      !GetUnsigned((*offsets)[0], std::numeric_limits<uint64_t>::max(), &info.data_begin) ||
      !GetUnsigned((*offsets)[1], std::numeric_limits<uint64_t>::max(), &info.data_end)) {
    return corrupt("\"data_offsets\" must be [begin, end] with non-negative integers, got ",
                   DescribeJson(*offsets));
  }
  if (info.data_begin > info.data_end) {
    return corrupt("data_offsets [", info.data_begin, ", ", info.data_end,
                   "] begin after they end");
  }
  if (info.data_end > data_size) {
    return corrupt("data_offsets [", info.data_begin, ", ", info.data_end,
                   "] end past the data region (", data_size, " bytes; truncated file?)");
  }
  if (info.data_end - info.data_begin != bytes) {
    return corrupt("data_offsets [", info.data_begin, ", ", info.data_end, "] span ",
                   info.data_end - info.data_begin, " bytes, but shape ", ShapeString(info.shape),
                   " of ", AbslView(DTypeName(info.dtype)), " needs ", bytes);
  }
  return info;
}

// The layout rule: sorted by offset, the spans tile [0, data_size) with no overlap and no gap.
absl::Status CheckLayout(const std::vector<TensorInfo>& tensors, uint64_t data_size,
                         std::string_view file_name) {
  uint64_t covered = 0;  // after the loop's i-th step: bytes [0, covered) belong to tensors 0..i
  const TensorInfo* last = nullptr;  // the tensor that ends at `covered`
  for (const TensorInfo& t : tensors) {
    if (t.data_begin < covered) {
      return absl::DataLossError(absl::StrCat(AbslView(file_name), ": tensor \"", t.name,
                                              "\" (bytes [", t.data_begin, ", ", t.data_end,
                                              ")) overlaps tensor \"", last->name, "\" (bytes [",
                                              last->data_begin, ", ", last->data_end, "))"));
    }
    if (t.data_begin > covered) {
      return absl::DataLossError(
          absl::StrCat(AbslView(file_name), ": bytes [", covered, ", ", t.data_begin,
                       ") of the data region belong to no tensor (a gap before tensor \"", t.name,
                       "\"); safetensors files have none"));
    }
    if (t.data_end > covered || last == nullptr) last = &t;
    covered = t.data_end;
  }
  if (covered != data_size) {
    return absl::DataLossError(absl::StrCat(AbslView(file_name), ": the data region is ", data_size,
                                            " bytes but its tensors cover ", covered, "; the last ",
                                            data_size - covered, " belong to no tensor"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsHeader> ParseHeaderImpl(std::string_view header_json, uint64_t data_size,
                                                  std::string_view file_name) {
  ASSIGN_OR_RETURN(const json root,
                   ParseJsonText(header_json, file_name, absl::StatusCode::kDataLoss));
  if (!root.is_object()) {
    return absl::DataLossError(absl::StrCat(
        AbslView(file_name), ": the header must be a JSON object, got ", DescribeJson(root)));
  }
  // JSON lets an object repeat a key (the parser keeps the last); a header that names a tensor
  // twice is corrupt, so its keys are read once more to find repeats.
  std::set<std::string> keys;
  std::string repeated;
  json::parser_callback_t on_key = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && repeated.empty() &&
        !keys.insert(parsed.get<std::string>()).second) {
      repeated = parsed.get<std::string>();
    }
    return true;
  };
  const bool parsed =
      !json::parse(header_json.begin(), header_json.end(), on_key, /*allow_exceptions=*/false)
           .is_discarded();
  if (parsed && !repeated.empty()) {
    return absl::DataLossError(
        absl::StrCat(AbslView(file_name), ": the header names \"", repeated, "\" more than once"));
  }
  SafetensorsHeader header;
  header.tensors.reserve(root.size());
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return absl::DataLossError(absl::StrCat(
            AbslView(file_name), ": \"__metadata__\" must be an object of strings, got ",
            DescribeJson(value)));
      }
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          return absl::DataLossError(absl::StrCat(AbslView(file_name),
                                                  ": \"__metadata__\" value \"", key,
                                                  "\" must be a string, got ", DescribeJson(text)));
        }
        header.metadata.emplace(key, text.get<std::string>());
      }
      continue;
    }
    ASSIGN_OR_RETURN(TensorInfo info, ParseTensorEntry(name, value, data_size, file_name));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.data_begin, a.data_end, a.name) <
                     std::tie(b.data_begin, b.data_end, b.name);
            });
  RETURN_IF_ERROR(CheckLayout(header.tensors, data_size, file_name));
  return header;
}

// Closes a file descriptor on every path out of Open.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be opened"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text.str();
}

// A shard name from an index must be a plain file inside the checkpoint directory.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  // The header parser guarantees the product fits in int64 unless a dimension is 0, in which
  // case the dimensions before the 0 may still overflow: check for it first.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json,
                                                         uint64_t data_size,
                                                         std::string_view file_name) {
  // NOTE: every JSON access above checks the type first; the catch only guarantees that nothing
  // (not even std::bad_alloc) crosses the module boundary.
  try {
    return ParseHeaderImpl(header_json, data_size, file_name);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(AbslView(file_name), ": header: ", e.what()));
  }
}

absl::StatusOr<SafetensorsImage> ParseSafetensorsImage(absl::Span<const uint8_t> image,
                                                       std::string_view file_name) {
  if (image.size() < 8) {
    return absl::DataLossError(absl::StrCat(AbslView(file_name), ": ", image.size(),
                                            " bytes is too short for a safetensors file"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | image[i];
  if (header_size > kMaxSafetensorsHeaderSize) {
    return absl::DataLossError(absl::StrCat(AbslView(file_name), ": header length ", header_size,
                                            " is above the limit of ", kMaxSafetensorsHeaderSize,
                                            " bytes (not a safetensors file?)"));
  }
  if (header_size > image.size() - 8) {
    return absl::DataLossError(absl::StrCat(AbslView(file_name), ": header length ", header_size,
                                            " runs past the end of the file (", image.size(),
                                            " bytes; truncated?)"));
  }
  SafetensorsImage result;
  result.data_offset = 8 + header_size;
  const std::string_view header_json(reinterpret_cast<const char*>(image.data()) + 8, header_size);
  ASSIGN_OR_RETURN(result.header, ParseSafetensorsHeader(
                                      header_json, image.size() - result.data_offset, file_name));
  return result;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot stat: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {  // also keeps mmap away from empty files
    return absl::DataLossError(
        absl::StrCat(path, ": ", size, " bytes is too short for a safetensors file"));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapping == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": mmap of ", size, " bytes failed: ", std::strerror(errno)));
  }
  file->mapping_ = mapping;  // from here the destructor unmaps, on error paths too
  file->mapping_size_ = size;

  const auto* bytes = static_cast<const uint8_t*>(mapping);
  ASSIGN_OR_RETURN(SafetensorsImage image,
                   ParseSafetensorsImage(absl::MakeConstSpan(bytes, size), path));
  file->header_ = std::move(image.header);
  file->data_ = bytes + image.data_offset;
  file->data_offset_ = image.data_offset;
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->index_.emplace(file->header_.tensors[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(dir, ": no such checkpoint directory"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  }
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;

  const std::string index_path = absl::StrCat(dir, "/", kIndexFile);
  if (IsRegularFile(index_path)) {
    ckpt->index_file_ = std::string(kIndexFile);
    ASSIGN_OR_RETURN(const std::string text, ReadTextFile(index_path));
    try {
      ASSIGN_OR_RETURN(const json root,
                       ParseJsonText(text, index_path, absl::StatusCode::kDataLoss));
      const json* map = nullptr;
      if (root.is_object()) {
        if (auto it = root.find("weight_map"); it != root.end()) map = &*it;
      }
      if (map == nullptr || !map->is_object()) {
        return absl::DataLossError(absl::StrCat(
            index_path,
            ": \"weight_map\" must be an object mapping tensor names to shard files, got ",
            map == nullptr ? (root.is_object() ? "nothing" : DescribeJson(root))
                           : DescribeJson(*map)));
      }
      if (map->empty()) {
        return absl::DataLossError(absl::StrCat(index_path, ": \"weight_map\" names no tensors"));
      }
      for (const auto& [name, file] : map->items()) {
        if (!file.is_string() || !IsPlainFileName(file.get<std::string>())) {
          return absl::DataLossError(
              absl::StrCat(index_path, ": \"weight_map\" entry for tensor \"", name,
                           "\" must be a file name in ", dir, ", got ", DescribeJson(file)));
        }
        ckpt->tensor_to_file_.emplace(name, file.get<std::string>());
        ckpt->file_to_tensors_[file.get<std::string>()].push_back(name);
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat(index_path, ": ", e.what()));
    }
    for (const auto& [file, names] : ckpt->file_to_tensors_) {
      const std::string path = absl::StrCat(dir, "/", file);
      if (!IsRegularFile(path)) {
        return absl::NotFoundError(absl::StrCat(
            path, ": shard file is missing (", kIndexFile, " places tensor \"", names.front(), "\"",
            names.size() > 1 ? absl::StrCat(" and ", names.size() - 1, " more") : "", " in it)"));
      }
    }
    return ckpt;
  }

  std::vector<std::string> files;
  if (IsRegularFile(absl::StrCat(dir, "/", kSingleFile))) {
    files.emplace_back(kSingleFile);
  } else {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": cannot list directory: ", std::strerror(errno)));
    }
    while (const dirent* entry = ::readdir(d)) {
      const std::string name = entry->d_name;
      if (absl::EndsWith(name, ".safetensors") && IsRegularFile(absl::StrCat(dir, "/", name))) {
        files.push_back(name);
      }
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no ", kIndexFile, ", ", kSingleFile, " or *.safetensors file"));
  }
  for (const std::string& name : files) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(absl::StrCat(dir, "/", name)));
    for (const TensorInfo& info : file->header().tensors) {
      auto [it, inserted] = ckpt->tensor_to_file_.emplace(info.name, name);
      if (!inserted) {
        return absl::DataLossError(absl::StrCat(dir, ": tensor \"", info.name, "\" is in both ",
                                                it->second, " and ", name));
      }
    }
    ckpt->open_files_.emplace(name, std::move(file));
  }
  return ckpt;
}

absl::Status Checkpoint::CheckShardHoldsIndexedTensors(const std::string& file_name,
                                                       const SafetensorsFile& file) const {
  auto it = file_to_tensors_.find(file_name);
  if (it == file_to_tensors_.end()) return absl::OkStatus();
  for (const std::string& name : it->second) {
    if (file.Find(name) == nullptr) {
      return absl::DataLossError(absl::StrCat(file.path(), ": has no tensor \"", name, "\", but ",
                                              index_file_, " places it in this file"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const SafetensorsFile*> Checkpoint::FileFor(std::string_view name) const {
  auto it = tensor_to_file_.find(name);
  if (it == tensor_to_file_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor \"", AbslView(name), "\" is not in checkpoint ", dir_));
  }
  const std::string& file_name = it->second;
  std::lock_guard<std::mutex> lock(mu_);
  if (auto open = open_files_.find(file_name); open != open_files_.end()) return open->second.get();
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(absl::StrCat(dir_, "/", file_name)));
  RETURN_IF_ERROR(CheckShardHoldsIndexedTensors(file_name, *file));
  const SafetensorsFile* result = file.get();
  open_files_.emplace(file_name, std::move(file));
  return result;
}

absl::StatusOr<Checkpoint::Entry> Checkpoint::Find(std::string_view name) const {
  ASSIGN_OR_RETURN(const SafetensorsFile* file, FileFor(name));
  const TensorInfo* info = file->Find(name);
  if (info == nullptr) {  // unreachable: FileFor checked the shard against the index
    return absl::NotFoundError(
        absl::StrCat(file->path(), ": has no tensor \"", AbslView(name), "\""));
  }
  return Entry{file, info};
}

bool Checkpoint::Contains(std::string_view name) const {
  return tensor_to_file_.find(name) != tensor_to_file_.end();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensor_to_file_.size());
  for (const auto& [name, file] : tensor_to_file_) names.push_back(name);
  return names;
}

absl::StatusOr<Checkpoint::SliceBytes> Checkpoint::LocateSlice(std::string_view name, int dim,
                                                               int64_t start,
                                                               int64_t length) const {
  ASSIGN_OR_RETURN(const Entry entry, Find(name));
  const TensorInfo& info = *entry.info;
  auto bad_request = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", AbslView(name), "\" (", entry.file->path(), ", ",
        AbslView(DTypeName(info.dtype)), " ", ShapeString(info.shape), "): ", parts...));
  };
  if (info.dtype == DType::kI32 || info.dtype == DType::kI64) {
    return bad_request("an integer tensor cannot be read as float");
  }
  const std::vector<int64_t> shape = info.shape.empty() ? std::vector<int64_t>{1} : info.shape;
  const int rank = static_cast<int>(shape.size());
  if (dim < 0 || dim >= rank) return bad_request("dimension ", dim, " is out of range");
  const int64_t extent = shape[dim];
  if (start < 0 || start > extent) {
    return bad_request("slice start ", start, " is outside dimension ", dim, " (size ", extent,
                       ")");
  }
  if (length < 0) length = extent - start;
  if (length > extent - start) {
    return bad_request("slice [", start, ", ", start, " + ", length, ") runs past dimension ", dim,
                       " (size ", extent, ")");
  }
  SliceBytes slice;
  slice.file = entry.file;
  slice.info = entry.info;
  // Row-major: the slice is `outer` runs of `length * inner` contiguous elements, the runs
  // `extent * inner` apart. With no element there is nothing to read (and the products below
  // could overflow); otherwise they are at most num_elements().
  if (info.num_elements() == 0) return slice;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= shape[i];
  for (int i = dim + 1; i < rank; ++i) inner *= shape[i];
  const int64_t run = length * inner;
  if (outer == 0 || run == 0) return slice;
  const uint64_t element = DTypeSize(info.dtype);
  slice.elements = outer * run;
  slice.file_offset =
      entry.file->data_offset() + info.data_begin + static_cast<uint64_t>(start * inner) * element;
  slice.run_bytes = static_cast<uint64_t>(run) * element;
  slice.stride = static_cast<uint64_t>(extent * inner) * element;
  slice.runs = outer;
  if (length == extent || outer == 1) {  // one contiguous span
    slice.run_bytes *= static_cast<uint64_t>(outer);
    slice.stride = slice.run_bytes;
    slice.runs = 1;
  }
  return slice;
}

absl::Status Checkpoint::ReadFloat(std::string_view name, int dim, int64_t start, int64_t length,
                                   float* dst) const {
  ASSIGN_OR_RETURN(const SliceBytes slice, LocateSlice(name, dim, start, length));
  if (slice.runs == 0) return absl::OkStatus();
  if (dst == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", AbslView(name), "\" (", slice.file->path(), ", ",
                     AbslView(DTypeName(slice.info->dtype)), " ", ShapeString(slice.info->shape),
                     "): the destination is null"));
  }
  const size_t element = DTypeSize(slice.info->dtype);
  const size_t run = slice.run_bytes / element;
  // The mapping's first byte: file offsets index it directly.
  const uint8_t* file_start =
      slice.file->Data(*slice.info) - slice.info->data_begin - slice.file->data_offset();
  for (int64_t o = 0; o < slice.runs; ++o) {
    ConvertToFloat(slice.info->dtype, file_start + slice.file_offset + o * slice.stride, run,
                   dst + o * run);
  }
  ReportLoadProgress(slice.file->path(), static_cast<int64_t>(slice.runs * slice.run_bytes));
  return absl::OkStatus();
}

}  // namespace tessera
