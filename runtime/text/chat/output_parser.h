// Splits generated text into reasoning, content and tool calls, incrementally.
//
// Qwen3 writes its reasoning as `<think>…</think>` and its tool calls hermes-style as
// `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. The parser takes the text in arbitrary
// chunks (a tag may be split anywhere, even inside a UTF-8 character) and emits events as soon as
// they are certain: reasoning and content deltas up to the point where the text might be the start
// of a tag (or of an unfinished character), a tool call once its closing tag arrives. Pushing a
// text in any chunking gives the same events, merged, as pushing it whole.
//
// Reasoning (as vLLM's current qwen3 reasoning parser): with reasoning on, generation starts
// inside the think block. An optional `<think>` at the very start (after whitespace) is dropped;
// everything up to `</think>` is reasoning, even when the output did not open the block itself
// (QwQ and the 2507 "Thinking" templates put `<think>` in the prompt). Output that never closes
// the block was cut short and is all reasoning. With reasoning off (the prompt already holds the
// closed, empty think block of enable_thinking=false, or the model does not reason) everything is
// content and think tags are left as text. Text is kept byte-exact: the "\n" after `<think>` and
// the "\n\n" after `</think>` stay in the deltas, as vLLM returns them.
//
// Tool calls (as vLLM's hermes parser, with two deliberate differences): each block's JSON
// must be an object with a string "name" and an "arguments" member; arguments are re-serialised
// the way vLLM does (Python json.dumps, ensure_ascii=False). A block whose JSON is malformed is
// reported as an error event and its text is kept as content (vLLM drops all tool calls then).
// Text between and after tool calls is content (vLLM drops it), except whitespace-only gaps after
// a tool call, which are dropped. A final `<tool_call>` without its closing tag is a tool call if
// its JSON is complete, else an error with its text kept as content.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tessera {

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text
};

struct OutputEvent {
  enum class Kind { kReasoning, kContent, kToolCall, kError };
  Kind kind;
  std::string text;    // kReasoning / kContent: the delta; kError: what was wrong
  ToolCall tool_call;  // kToolCall
};

// All events of one output, accumulated.
struct ParsedOutput {
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;
  std::vector<std::string> errors;
};

class ChatOutputParser {
 public:
  struct Options {
    bool reasoning = true;   // split off <think>…</think>
    bool tool_calls = true;  // parse <tool_call>…</tool_call>
  };

  // Options for output generated after `prompt`: reasoning when the model reasons
  // (`model_reasons`, e.g. its chat template knows </think>) and the prompt does not already
  // close the think block of the assistant turn it opens.
  static Options OptionsForPrompt(std::string_view prompt, bool model_reasons);

  explicit ChatOutputParser(Options options);

  // Feeds the next chunk; returns the events it made certain (text deltas merged by kind).
  std::vector<OutputEvent> Push(std::string_view chunk);
  // End of output: flushes what was held back.
  std::vector<OutputEvent> Finish();

 private:
  enum class State { kThinkStart, kReasoning, kContent, kToolCall };
  void Process(bool final, std::vector<OutputEvent>* events);
  void EmitText(OutputEvent::Kind kind, std::string_view text, std::vector<OutputEvent>* events);
  void HandleToolCall(std::string_view body, bool closed, std::vector<OutputEvent>* events);

  Options options_;
  State state_;
  std::string buffer_;            // text not yet emitted
  bool after_tool_call_ = false;  // content so far since the last tool call is whitespace
  bool finished_ = false;
};

// One-shot: Push(text) then Finish(), accumulated.
ParsedOutput ParseChatOutput(std::string_view text, ChatOutputParser::Options options);
// Accumulates events (e.g. streamed deltas) into a ParsedOutput.
void Accumulate(const std::vector<OutputEvent>& events, ParsedOutput* out);

}  // namespace tessera
