// Chrome trace-event JSON of the engine's steps (see step_trace.h).
#include "runtime/engine/step_trace.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera {

const char* StepPhaseName(StepPhase phase) {
  switch (phase) {
    case StepPhase::kIntake:
      return "intake";
    case StepPhase::kSchedule:
      return "schedule";
    case StepPhase::kPlan:
      return "plan";
    case StepPhase::kBroadcast:
      return "broadcast";
    case StepPhase::kForward:
      return "forward";
    case StepPhase::kCollect:
      return "collect";
    case StepPhase::kOutputWait:
      return "output_wait";
    case StepPhase::kSample:
      return "sample";
    case StepPhase::kOutput:
      return "output";
    case StepPhase::kCount:
      break;
  }
  return "?";
}

StepTrace::StepTrace(std::string path, int64_t capacity)
    : path_(std::move(path)), capacity_(static_cast<size_t>(std::max<int64_t>(capacity, 1))) {}

void StepTrace::Add(const StepRecord& record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ring_.size() < capacity_) {
    ring_.push_back(record);
  } else {
    ring_[added_ % capacity_] = record;
  }
  ++added_;
}

void StepTrace::SetOutput(int64_t step, int64_t begin_ns, int64_t end_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t i = added_ - 1; i >= 0 && i >= added_ - static_cast<int64_t>(ring_.size()); --i) {
    StepRecord& r = ring_[i % capacity_];
    if (r.step != step) continue;
    r.begin_ns[static_cast<int>(StepPhase::kOutput)] = begin_ns;
    r.end_ns[static_cast<int>(StepPhase::kOutput)] = end_ns;
    return;
  }
}

std::string StepTrace::Json() const {
  std::vector<StepRecord> steps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    steps = ring_;
  }
  std::sort(steps.begin(), steps.end(),
            [](const StepRecord& a, const StepRecord& b) { return a.step < b.step; });
  int64_t origin = INT64_MAX;
  for (const StepRecord& r : steps) {
    for (int p = 0; p < static_cast<int>(StepPhase::kCount); ++p) {
      if (r.end_ns[p] != 0) origin = std::min(origin, r.begin_ns[p]);
    }
  }
  const auto us = [origin](int64_t ns) { return static_cast<double>(ns - origin) / 1e3; };
  std::string out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  absl::StrAppend(&out,
                  "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"args\":{\"name\":\"tessera "
                  "engine (rank 0)\"}},\n"
                  "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":1,\"args\":{\"name\":"
                  "\"step loop\"}},\n"
                  "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":2,\"args\":{\"name\":"
                  "\"output thread\"}}");
  for (const StepRecord& r : steps) {
    int64_t begin = INT64_MAX, end = 0;
    for (int p = 0; p < static_cast<int>(StepPhase::kCount); ++p) {
      if (r.end_ns[p] == 0 || (r.output_async && p == static_cast<int>(StepPhase::kOutput)))
        continue;
      begin = std::min(begin, r.begin_ns[p]);
      end = std::max(end, r.end_ns[p]);
    }
    if (end == 0) continue;
    absl::StrAppend(
        &out,
        absl::StrFormat(
            ",\n{\"name\":\"step %d\",\"cat\":\"step\",\"ph\":\"X\",\"pid\":0,\"tid\":1,"
            "\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"step\":%d,\"seqs\":%d,\"prefill_tokens\":%d,"
            "\"decode_tokens\":%d,\"one_token_seqs\":%d,\"single_token_seqs\":%d,"
            "\"running\":%d,\"waiting\":%d,\"pure_decode\":%s,"
            "\"output_async\":%s,\"collected\":%d,\"collected_device_ms\":%.3f}}",
            r.step, us(begin), static_cast<double>(end - begin) / 1e3, r.step, r.seqs,
            r.prefill_tokens, r.decode_tokens, r.one_token_seqs, r.single_token_seqs, r.running,
            r.waiting, r.pure_decode ? "true" : "false", r.output_async ? "true" : "false",
            r.collected, static_cast<double>(r.collected_device_ns) / 1e6));
    for (int p = 0; p < static_cast<int>(StepPhase::kCount); ++p) {
      if (r.end_ns[p] == 0) continue;
      const int tid = r.output_async && p == static_cast<int>(StepPhase::kOutput) ? 2 : 1;
      absl::StrAppend(
          &out, absl::StrFormat(",\n{\"name\":\"%s\",\"cat\":\"phase\",\"ph\":\"X\",\"pid\":0,"
                                "\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"step\":%d}}",
                                StepPhaseName(static_cast<StepPhase>(p)), tid, us(r.begin_ns[p]),
                                static_cast<double>(r.end_ns[p] - r.begin_ns[p]) / 1e3, r.step));
    }
    absl::StrAppend(&out, absl::StrFormat(",\n{\"name\":\"sequences\",\"ph\":\"C\",\"pid\":0,"
                                          "\"ts\":%.3f,\"args\":{\"running\":%d,\"waiting\":%d}}",
                                          us(begin), r.running, r.waiting));
  }
  absl::StrAppend(&out, "\n]}\n");
  return out;
}

absl::Status StepTrace::Write() const {
  std::ofstream f(path_, std::ios::trunc);
  if (!f) return absl::UnavailableError(absl::StrCat("cannot write the step trace ", path_));
  f << Json();
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("writing the step trace ", path_, " failed"));
  return absl::OkStatus();
}

}  // namespace tessera
