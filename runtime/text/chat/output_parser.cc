#include "runtime/text/chat/output_parser.h"

#include <algorithm>
#include <exception>

#include "nlohmann/json.hpp"
#include "runtime/text/chat/concat.h"
#include "runtime/text/chat/py_json.h"

namespace tessera {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolOpen = "<tool_call>";
constexpr std::string_view kToolClose = "</tool_call>";

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

size_t LeadingSpace(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && IsSpace(s[i])) ++i;
  return i;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// Bytes at the end of `s` that begin a UTF-8 character not yet complete.
size_t IncompleteUtf8Tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t need = (b & 0xE0) == 0xC0   ? 2
                        : (b & 0xF0) == 0xE0 ? 3
                        : (b & 0xF8) == 0xF0 ? 4
                                             : 1;
    return need > back ? back : 0;
  }
  return 0;
}

// How much of the end of `s` must wait: a proper prefix of `tag`, or an unfinished character.
size_t HoldBack(std::string_view s, std::string_view tag) {
  for (size_t k = std::min(s.size(), tag.size() - 1); k > 0; --k) {
    if (s.compare(s.size() - k, k, tag.substr(0, k)) == 0) return k;
  }
  return IncompleteUtf8Tail(s);
}

}  // namespace

ChatOutputParser::Options ChatOutputParser::OptionsForPrompt(std::string_view prompt,
                                                             bool model_reasons) {
  Options options;
  if (!model_reasons) {
    options.reasoning = false;
    return options;
  }
  // The turn being generated starts at the last <|im_start|>; if the template already closed a
  // think block there (enable_thinking=false), the output is plain content.
  const size_t turn = prompt.rfind("<|im_start|>");
  const std::string_view tail = turn == std::string_view::npos ? prompt : prompt.substr(turn);
  options.reasoning = tail.find(kThinkClose) == std::string_view::npos;
  return options;
}

ChatOutputParser::ChatOutputParser(Options options)
    : options_(options), state_(options.reasoning ? State::kThinkStart : State::kContent) {}

std::vector<OutputEvent> ChatOutputParser::Push(std::string_view chunk) {
  std::vector<OutputEvent> events;
  if (finished_) return events;
  buffer_.append(chunk);
  Process(false, &events);
  return events;
}

std::vector<OutputEvent> ChatOutputParser::Finish() {
  std::vector<OutputEvent> events;
  if (finished_) return events;
  Process(true, &events);
  finished_ = true;
  return events;
}

void ChatOutputParser::EmitText(OutputEvent::Kind kind, std::string_view text,
                                std::vector<OutputEvent>* events) {
  if (text.empty()) return;
  if (!events->empty() && events->back().kind == kind) {
    events->back().text.append(text);
    return;
  }
  OutputEvent e;
  e.kind = kind;
  e.text = std::string(text);
  events->push_back(std::move(e));
}

void ChatOutputParser::Process(bool final, std::vector<OutputEvent>* events) {
  while (true) {
    const std::string_view buf = buffer_;
    switch (state_) {
      case State::kThinkStart: {
        const std::string_view rest = buf.substr(LeadingSpace(buf));
        if (StartsWith(rest, kThinkOpen)) {
          buffer_.erase(0, buf.size() - rest.size() + kThinkOpen.size());
          state_ = State::kReasoning;
          continue;
        }
        if (!final && StartsWith(kThinkOpen, rest)) return;  // may still become <think>
        state_ = State::kReasoning;
        continue;
      }
      case State::kReasoning: {
        const size_t close = buf.find(kThinkClose);
        if (close != std::string_view::npos) {
          EmitText(OutputEvent::Kind::kReasoning, buf.substr(0, close), events);
          buffer_.erase(0, close + kThinkClose.size());
          state_ = State::kContent;
          continue;
        }
        const size_t emit = buf.size() - (final ? 0 : HoldBack(buf, kThinkClose));
        EmitText(OutputEvent::Kind::kReasoning, buf.substr(0, emit), events);
        buffer_.erase(0, emit);
        return;
      }
      case State::kContent: {
        if (!options_.tool_calls) {
          const size_t emit = buf.size() - (final ? 0 : IncompleteUtf8Tail(buf));
          EmitText(OutputEvent::Kind::kContent, buf.substr(0, emit), events);
          buffer_.erase(0, emit);
          return;
        }
        const size_t open = buf.find(kToolOpen);
        if (open != std::string_view::npos) {
          const std::string_view before = buf.substr(0, open);
          // Whitespace between two tool calls is dropped.
          if (!(after_tool_call_ && LeadingSpace(before) == before.size())) {
            EmitText(OutputEvent::Kind::kContent, before, events);
          }
          buffer_.erase(0, open + kToolOpen.size());
          state_ = State::kToolCall;
          continue;
        }
        if (after_tool_call_) {
          // Whitespace after a tool call waits: dropped if the output ends or another tool call
          // follows, content otherwise.
          const size_t space = LeadingSpace(buf);
          if (space == buf.size()) {
            if (final) buffer_.clear();
            return;
          }
          if (!final && StartsWith(kToolOpen, buf.substr(space))) return;
          after_tool_call_ = false;
        }
        const size_t emit = buf.size() - (final ? 0 : HoldBack(buf, kToolOpen));
        EmitText(OutputEvent::Kind::kContent, buf.substr(0, emit), events);
        buffer_.erase(0, emit);
        return;
      }
      case State::kToolCall: {
        const size_t close = buf.find(kToolClose);
        if (close != std::string_view::npos) {
          HandleToolCall(buf.substr(0, close), true, events);
          buffer_.erase(0, close + kToolClose.size());
          state_ = State::kContent;
          continue;
        }
        if (final) {
          HandleToolCall(buf, false, events);
          buffer_.clear();
          state_ = State::kContent;
        }
        return;
      }
    }
  }
}

void ChatOutputParser::HandleToolCall(std::string_view body, bool closed,
                                      std::vector<OutputEvent>* events) {
  using Json = nlohmann::ordered_json;
  std::string error;
  Json call;
  try {
    call = Json::parse(body.begin(), body.end());
  } catch (const std::exception& e) {
    error = jinja::Concat("tool call is not valid JSON: ", e.what());
  }
  if (error.empty()) {
    if (!call.is_object()) {
      error = "tool call JSON is not an object";
    } else if (!call.contains("name") || !call["name"].is_string()) {
      error = "tool call has no string \"name\"";
    } else if (!call.contains("arguments")) {
      error = "tool call has no \"arguments\"";
    } else if (jinja::JsonDeeperThan(call, jinja::kMaxJsonDepth)) {
      error = "tool call JSON nests too deeply";
    }
  }
  if (error.empty()) {
    absl::StatusOr<std::string> arguments =
        jinja::PyJsonDumps(jinja::FromJson(call["arguments"]), jinja::JsonDumpsOptions{});
    if (!arguments.ok()) {
      error = jinja::Concat("tool call arguments: ", StdView(arguments.status().message()));
    } else {
      OutputEvent e;
      e.kind = OutputEvent::Kind::kToolCall;
      e.tool_call.name = call["name"].get<std::string>();
      e.tool_call.arguments = std::move(*arguments);
      events->push_back(std::move(e));
      after_tool_call_ = true;
      return;
    }
  }
  if (!closed) error = jinja::Concat("unterminated <tool_call>: ", error);
  OutputEvent e;
  e.kind = OutputEvent::Kind::kError;
  e.text = std::move(error);
  events->push_back(std::move(e));
  after_tool_call_ = false;
  EmitText(OutputEvent::Kind::kContent,
           jinja::Concat(kToolOpen, body, closed ? kToolClose : std::string_view()), events);
}

void Accumulate(const std::vector<OutputEvent>& events, ParsedOutput* out) {
  for (const OutputEvent& e : events) {
    switch (e.kind) {
      case OutputEvent::Kind::kReasoning:
        out->reasoning += e.text;
        break;
      case OutputEvent::Kind::kContent:
        out->content += e.text;
        break;
      case OutputEvent::Kind::kToolCall:
        out->tool_calls.push_back(e.tool_call);
        break;
      case OutputEvent::Kind::kError:
        out->errors.push_back(e.text);
        break;
    }
  }
}

ParsedOutput ParseChatOutput(std::string_view text, ChatOutputParser::Options options) {
  ChatOutputParser parser(options);
  ParsedOutput out;
  Accumulate(parser.Push(text), &out);
  Accumulate(parser.Finish(), &out);
  return out;
}

}  // namespace tessera
