// The output parser: one-shot results for sample Qwen3 outputs, and the streaming contract — every
// chunking of a sample (every split point, every byte alone, random chunks) gives the one-shot
// events, every delta is valid UTF-8, and text comes out as soon as it cannot be part of a tag.
#include "runtime/text/chat/output_parser.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "runtime/text/chat/chat_template.h"
#include "runtime/text/utf8.h"

namespace tessera {
namespace {

using Options = ChatOutputParser::Options;
constexpr Options kThinking{true, true};
constexpr Options kNoThinking{false, true};

struct Sample {
  const char* name;
  std::string text;
  Options options;
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;
  size_t errors = 0;
};

const std::vector<Sample>& Samples() {
  static const auto* samples = new std::vector<Sample>{
      {"think_then_content",
       "<think>\nThe user wants 2+2.\n</think>\n\nThe answer is 4.",
       kThinking,
       "\nThe user wants 2+2.\n",
       "\n\nThe answer is 4.",
       {}},
      {"think_then_tool_call",
       "<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", "
       "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
       kThinking,
       "\nNeed the weather.\n",
       "\n\n",
       {{"get_weather", R"({"city": "Paris"})"}}},
      {"multiple_tool_calls",
       "<think>\n\n</think>\n\nChecking both.\n<tool_call>\n{\"name\": \"w\", \"arguments\": "
       "{\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"w\", \"arguments\": "
       "{\"city\": \"東京\", \"days\": 2}}\n</tool_call>\n",
       kThinking,
       "\n\n",
       "\n\nChecking both.\n",
       {{"w", R"({"city": "Oslo"})"}, {"w", R"({"city": "東京", "days": 2})"}}},
      {"text_between_tool_calls",
       "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\nthen\n<tool_call>{\"name\": "
       "\"b\", \"arguments\": []}</tool_call> done",
       kNoThinking,
       "",
       "\nthen\n done",
       {{"a", "{}"}, {"b", "[]"}}},
      {"malformed_json",
       "Sure.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
       kNoThinking,
       "",
       "Sure.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
       {},
       1},
      {"malformed_then_good",
       "<tool_call>{oops}</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {\"x\": "
       "1.0}}</tool_call>",
       kNoThinking,
       "",
       "<tool_call>{oops}</tool_call>\n",
       {{"g", R"({"x": 1.0})"}},
       1},
      {"not_an_object",
       "<tool_call>[1, 2]</tool_call>",
       kNoThinking,
       "",
       "<tool_call>[1, 2]</tool_call>",
       {},
       1},
      {"missing_name",
       "<tool_call>{\"arguments\": {}}</tool_call>",
       kNoThinking,
       "",
       "<tool_call>{\"arguments\": {}}</tool_call>",
       {},
       1},
      {"arguments_reserialised",
       "<tool_call>{\"name\":\"f\",\"arguments\":{\"n\":1e5,\"s\":\"\\u00e9\\n\",\"l\":[true,"
       "null,-0.0]}}</tool_call>",
       kNoThinking,
       "",
       "",
       {{"f", R"({"n": 100000.0, "s": "é\n", "l": [true, null, -0.0]})"}}},
      {"unterminated_complete_json",
       "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}\n",
       kNoThinking,
       "",
       "",
       {{"f", R"({"q": "x"})"}}},
      {"unterminated_incomplete_json",
       "Let me call.\n<tool_call>\n{\"name\": \"f\", \"argu",
       kNoThinking,
       "",
       "Let me call.\n<tool_call>\n{\"name\": \"f\", \"argu",
       {},
       1},
      {"no_think_block_while_thinking",
       "Just an answer, cut short",
       kThinking,
       "Just an answer, cut short",
       "",
       {}},
      {"no_think_block_thinking_off", "Just an answer.", kNoThinking, "", "Just an answer.", {}},
      {"close_without_open",
       "reasoning from a prompt-opened block\n</think>\n\nanswer",
       kThinking,
       "reasoning from a prompt-opened block\n",
       "\n\nanswer",
       {}},
      {"think_tags_left_as_text_when_off",
       "<think>\n\n</think>\n\nHi",
       kNoThinking,
       "",
       "<think>\n\n</think>\n\nHi",
       {}},
      {"leading_whitespace_before_think", "\n <think>r</think>c", kThinking, "r", "c", {}},
      {"late_think_tag_is_text", "abc<think>def</think>x", kThinking, "abc<think>def", "x", {}},
      {"tool_call_inside_reasoning_is_text",
       "<think>maybe <tool_call> here</think>ok",
       kThinking,
       "maybe <tool_call> here",
       "ok",
       {}},
      {"partial_tag_at_end", "<think>abc</thi", kThinking, "abc</thi", "", {}},
      {"partial_tool_tag_at_end",
       "<think></think>answer <tool_c",
       kThinking,
       "",
       "answer <tool_c",
       {}},
      {"utf8",
       "<think>é😀ß</think>日本語 <tool_call>{\"name\": \"ü\", \"arguments\": {\"k\": "
       "\"😀\"}}</tool_call>",
       kThinking,
       "é😀ß",
       "日本語 ",
       {{"ü", R"({"k": "😀"})"}}},
      {"tool_calls_off",
       "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
       Options{false, false},
       "",
       "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
       {}},
      {"empty", "", kThinking, "", "", {}},
      {"only_think_open", "<think>", kThinking, "", "", {}},
  };
  return *samples;
}

// Merges adjacent text events of the same kind, so that chunkings can be compared.
std::vector<OutputEvent> Merge(const std::vector<OutputEvent>& events) {
  std::vector<OutputEvent> out;
  for (const OutputEvent& e : events) {
    const bool text =
        e.kind == OutputEvent::Kind::kReasoning || e.kind == OutputEvent::Kind::kContent;
    if (text && !out.empty() && out.back().kind == e.kind) {
      out.back().text += e.text;
    } else if (!text || !e.text.empty()) {
      out.push_back(e);
    }
  }
  return out;
}

std::string Describe(const std::vector<OutputEvent>& events) {
  std::string s;
  for (const OutputEvent& e : events) {
    const char* kind[] = {"reasoning", "content", "tool_call", "error"};
    s += std::string(kind[static_cast<int>(e.kind)]) + "(" + e.text + e.tool_call.name + " " +
         e.tool_call.arguments + ") ";
  }
  return s;
}

// Streams `chunks` through a parser, checking each delta is valid UTF-8.
std::vector<OutputEvent> Stream(const std::vector<std::string>& chunks, Options options) {
  ChatOutputParser parser(options);
  std::vector<OutputEvent> all;
  const auto take = [&](std::vector<OutputEvent> events) {
    for (OutputEvent& e : events) {
      EXPECT_EQ(FindInvalidUtf8(e.text), std::string_view::npos) << "delta splits a character";
      all.push_back(std::move(e));
    }
  };
  for (const std::string& chunk : chunks) take(parser.Push(chunk));
  take(parser.Finish());
  return all;
}

void ExpectSameEvents(const std::vector<OutputEvent>& got, const std::vector<OutputEvent>& want) {
  EXPECT_EQ(Describe(Merge(got)), Describe(Merge(want)));
}

TEST(OutputParser, OneShot) {
  for (const Sample& s : Samples()) {
    SCOPED_TRACE(s.name);
    const ParsedOutput out = ParseChatOutput(s.text, s.options);
    EXPECT_EQ(out.reasoning, s.reasoning);
    EXPECT_EQ(out.content, s.content);
    ASSERT_EQ(out.tool_calls.size(), s.tool_calls.size());
    for (size_t i = 0; i < s.tool_calls.size(); ++i) {
      EXPECT_EQ(out.tool_calls[i].name, s.tool_calls[i].name);
      EXPECT_EQ(out.tool_calls[i].arguments, s.tool_calls[i].arguments);
    }
    EXPECT_EQ(out.errors.size(), s.errors);
  }
}

TEST(OutputParser, EverySplitPointMatchesOneShot) {
  for (const Sample& s : Samples()) {
    SCOPED_TRACE(s.name);
    const std::vector<OutputEvent> whole = Stream({s.text}, s.options);
    for (size_t cut = 0; cut <= s.text.size(); ++cut) {
      SCOPED_TRACE(cut);
      ExpectSameEvents(Stream({s.text.substr(0, cut), s.text.substr(cut)}, s.options), whole);
    }
    for (size_t a = 0; a <= s.text.size() && s.text.size() <= 80; ++a) {
      for (size_t b = a; b <= s.text.size(); ++b) {
        ExpectSameEvents(
            Stream({s.text.substr(0, a), s.text.substr(a, b - a), s.text.substr(b)}, s.options),
            whole);
      }
    }
  }
}

TEST(OutputParser, BytewiseAndRandomChunksMatchOneShot) {
  std::mt19937 rng(1234);
  for (const Sample& s : Samples()) {
    SCOPED_TRACE(s.name);
    const std::vector<OutputEvent> whole = Stream({s.text}, s.options);
    std::vector<std::string> bytes;
    for (char c : s.text) bytes.emplace_back(1, c);
    ExpectSameEvents(Stream(bytes, s.options), whole);
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<std::string> chunks;
      for (size_t i = 0; i < s.text.size();) {
        const size_t n = std::uniform_int_distribution<size_t>(0, 6)(rng);
        chunks.push_back(s.text.substr(i, n));
        i += n;
      }
      ExpectSameEvents(Stream(chunks, s.options), whole);
    }
  }
}

std::string Texts(const std::vector<OutputEvent>& events) {
  std::string s;
  for (const OutputEvent& e : Merge(events)) {
    if (e.kind == OutputEvent::Kind::kReasoning) s += "R[" + e.text + "]";
    if (e.kind == OutputEvent::Kind::kContent) s += "C[" + e.text + "]";
    if (e.kind == OutputEvent::Kind::kToolCall) s += "T[" + e.tool_call.name + "]";
    if (e.kind == OutputEvent::Kind::kError) s += "E";
  }
  return s;
}

TEST(OutputParser, EmitsAsSoonAsCertain) {
  ChatOutputParser p(kThinking);
  EXPECT_EQ(Texts(p.Push("  <thi")), "");  // may still be <think>
  EXPECT_EQ(Texts(p.Push("nk>\nab")), "R[\nab]");
  EXPECT_EQ(Texts(p.Push("c</th")), "R[c]");  // "</th" might close the block
  EXPECT_EQ(Texts(p.Push("x")), "R[</thx]");  // it did not
  EXPECT_EQ(Texts(p.Push("</think>\n\nHel")), "C[\n\nHel]");
  EXPECT_EQ(Texts(p.Push("lo <tool")), "C[lo ]");
  EXPECT_EQ(Texts(p.Push("_call>{\"name\": \"f\", \"arguments\": {}}")), "");
  EXPECT_EQ(Texts(p.Push("</tool_call>")), "T[f]");
  EXPECT_EQ(Texts(p.Push("\n")), "");  // whitespace after a tool call waits
  EXPECT_EQ(Texts(p.Push("P.S.")), "C[\nP.S.]");
  EXPECT_EQ(Texts(p.Push("\xc3")), "");  // half of "é"
  EXPECT_EQ(Texts(p.Push("\xa9")), "C[é]");
  EXPECT_EQ(Texts(p.Finish()), "");
  EXPECT_EQ(Texts(p.Push("more")), "");  // finished
}

TEST(OutputParser, TrailingWhitespaceAfterToolCallIsDropped) {
  ChatOutputParser p(kNoThinking);
  EXPECT_EQ(Texts(p.Push("<tool_call>{\"name\": \"f\", \"arguments\": 1}</tool_call>\n\n")),
            "T[f]");
  EXPECT_EQ(Texts(p.Finish()), "");
}

TEST(OutputParser, ErrorsCarryTheReason) {
  const ParsedOutput out =
      ParseChatOutput("<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>", kNoThinking);
  ASSERT_EQ(out.errors.size(), 1u);
  EXPECT_EQ(out.errors[0], "tool call has no string \"name\"");
  const ParsedOutput cut = ParseChatOutput("<tool_call>{\"name\"", kNoThinking);
  ASSERT_EQ(cut.errors.size(), 1u);
  EXPECT_EQ(cut.errors[0].rfind("unterminated <tool_call>: tool call is not valid JSON", 0), 0u)
      << cut.errors[0];
}

TEST(OutputParser, DeeplyNestedArgumentsAreAnError) {
  const std::string deep = std::string(50000, '[') + std::string(50000, ']');
  const ParsedOutput out = ParseChatOutput(
      "<tool_call>{\"name\": \"f\", \"arguments\": " + deep + "}</tool_call>", kNoThinking);
  EXPECT_TRUE(out.tool_calls.empty());
  ASSERT_EQ(out.errors.size(), 1u);
  EXPECT_EQ(out.errors[0], "tool call JSON nests too deeply");
}

TEST(OutputParser, OptionsFromRenderedPrompts) {
  const std::string data = std::string(TESSERA_SOURCE_DIR) + "/tests/data/qwen3";
  absl::StatusOr<ChatTemplate> qwen3 = ChatTemplate::Load(data + "/tokenizer-qwen3-0.6b");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  ChatRequest request;
  request.messages = nlohmann::ordered_json::parse(
      R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
          {"role": "user", "content": "c"}])");
  request.add_generation_prompt = true;
  const std::string thinking = *qwen3->Render(request);
  EXPECT_TRUE(ChatOutputParser::OptionsForPrompt(thinking, qwen3->knows_think_tags()).reasoning);
  request.enable_thinking = false;
  const std::string no_thinking = *qwen3->Render(request);
  EXPECT_FALSE(
      ChatOutputParser::OptionsForPrompt(no_thinking, qwen3->knows_think_tags()).reasoning);
  // QwQ opens the think block in the prompt: the output starts inside it.
  EXPECT_TRUE(
      ChatOutputParser::OptionsForPrompt("<|im_start|>assistant\n<think>\n", true).reasoning);
  // A model without reasoning (Qwen2.5) never gets a reasoning split.
  EXPECT_FALSE(ChatOutputParser::OptionsForPrompt(thinking, false).reasoning);
}

}  // namespace
}  // namespace tessera
