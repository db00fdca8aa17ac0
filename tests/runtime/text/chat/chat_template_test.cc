// Chat templates rendered as transformers renders them: the cases of make_cases.py (Qwen3's
// current template from tokenizer_config.json, and the original Qwen3, Qwen2.5 and QwQ templates),
// then the loading rules and request handling.
#include "runtime/text/chat/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace tessera {
namespace {

using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

const std::string kData = std::string(TESSERA_SOURCE_DIR) + "/tests/data/qwen3";

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const Json& Cases() {
  static const Json* cases = new Json(Json::parse(ReadText(kData + "/chat_template_cases.json")));
  return *cases;
}

ChatTemplate TemplateFor(const std::string& name) {
  const Json& spec = Cases()["templates"][name];
  if (spec.contains("dir")) {
    absl::StatusOr<ChatTemplate> t =
        ChatTemplate::Load(kData + "/" + spec["dir"].get<std::string>());
    EXPECT_TRUE(t.ok()) << t.status();
    return *t;
  }
  std::vector<std::pair<std::string, std::string>> special;
  for (const auto& [k, v] : Cases()["special_tokens"].items()) special.emplace_back(k, v);
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::FromString(ReadText(kData + "/" + spec["file"].get<std::string>()), special);
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

int CheckCases(const std::string& template_name) {
  const ChatTemplate chat = TemplateFor(template_name);
  int checked = 0;
  for (const Json& c : Cases()["cases"]) {
    if (c["template"] != template_name) continue;
    Json request = Json::object();
    request["messages"] = Cases()["conversations"][c["conversation"].get<std::string>()];
    request["tools"] =
        c["tools"].is_null() ? Json() : Cases()["tools"][c["tools"].get<std::string>()];
    request["add_generation_prompt"] = c["add_generation_prompt"];
    if (c.contains("enable_thinking")) request["enable_thinking"] = c["enable_thinking"];
    SCOPED_TRACE(c.dump());
    absl::StatusOr<ChatRequest> parsed = ParseChatRequest(request);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    absl::StatusOr<std::string> text = chat.Render(*parsed);
    ++checked;
    if (c.contains("text")) {
      EXPECT_TRUE(text.ok()) << text.status();
      if (text.ok()) {
        EXPECT_EQ(*text, c["text"].get<std::string>());
      }
    } else if (text.ok()) {
      ADD_FAILURE() << "transformers failed with: " << c["error"];
    } else {
      EXPECT_NE(std::string(text.status().message()).find(c["error"].get<std::string>()),
                std::string::npos)
          << text.status();
      EXPECT_NE(std::string(text.status().message()).find("line "), std::string::npos);
    }
  }
  return checked;
}

TEST(ChatTemplateCases, Qwen3TokenizerConfig) { EXPECT_GT(CheckCases("qwen3"), 100); }
TEST(ChatTemplateCases, Qwen3Original) { EXPECT_GT(CheckCases("qwen3-original"), 100); }
TEST(ChatTemplateCases, Qwen25) { EXPECT_GT(CheckCases("qwen2.5"), 100); }
TEST(ChatTemplateCases, QwQ) { EXPECT_GT(CheckCases("qwq"), 100); }

// --- loading rules

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("tessera_chat_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
             "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path() const { return path_.string(); }
  void Write(const std::string& name, const std::string& text) const {
    fs::create_directories((path_ / name).parent_path());
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  fs::path path_;
};

ChatRequest UserSays(const std::string& text, bool tools = false) {
  ChatRequest r;
  r.messages = Json::array({{{"role", "user"}, {"content", text}}});
  if (tools) r.tools = Json::array({{{"type", "function"}}});
  return r;
}

std::string MustRender(const ChatTemplate& t, const ChatRequest& r) {
  absl::StatusOr<std::string> text = t.Render(r);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatTemplateLoad, ConfigStringAndSpecialTokens) {
  TempDir dir;
  dir.Write("tokenizer_config.json",
            R"({"chat_template": "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}",
                "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>",
                "pad_token": null})");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(MustRender(*t, UserSays("x")), "<s>|</s>||");
  EXPECT_EQ(t->origin(), dir.path() + "/tokenizer_config.json");
}

TEST(ChatTemplateLoad, JinjaFileWinsOverConfig) {
  TempDir dir;
  dir.Write("tokenizer_config.json", R"({"chat_template": "from config", "eos_token": "E"})");
  dir.Write("chat_template.jinja", "from file {{ eos_token }}\n");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(MustRender(*t, UserSays("x")), "from file E");  // trailing newline dropped
}

TEST(ChatTemplateLoad, NamedTemplatesPickToolUseWithTools) {
  TempDir dir;
  dir.Write("tokenizer_config.json",
            R"({"chat_template": [{"name": "default", "template": "D"},
                                  {"name": "tool_use", "template": "T"}]})");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(MustRender(*t, UserSays("x")), "D");
  EXPECT_EQ(MustRender(*t, UserSays("x", /*tools=*/true)), "T");
  ChatRequest empty_tools = UserSays("x");
  empty_tools.tools = Json::array();  // not None: transformers picks tool_use
  EXPECT_EQ(MustRender(*t, empty_tools), "T");
}

TEST(ChatTemplateLoad, AdditionalTemplatesDirectory) {
  TempDir dir;
  dir.Write("tokenizer_config.json", R"({"chat_template": "ignored"})");
  dir.Write("additional_chat_templates/tool_use.jinja", "tools!");
  dir.Write("chat_template.jinja", "plain");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(MustRender(*t, UserSays("x")), "plain");
  EXPECT_EQ(MustRender(*t, UserSays("x", true)), "tools!");
}

TEST(ChatTemplateLoad, NoDefaultIsAnError) {
  TempDir dir;
  dir.Write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "R"}]})");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::string> text = t->Render(UserSays("x"));
  ASSERT_FALSE(text.ok());
  EXPECT_NE(std::string(text.status().message()).find("'rag'"), std::string::npos);
}

TEST(ChatTemplateLoad, LegacySpecialTokensMap) {
  TempDir dir;
  dir.Write("tokenizer_config.json", R"({"chat_template": "{{ eos_token }}{{ bos_token }}"})");
  dir.Write("special_tokens_map.json",
            R"({"eos_token": {"content": "<eos>"}, "bos_token": "<b>"})");
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(MustRender(*t, UserSays("x")), "<eos><b>");
}

TEST(ChatTemplateLoad, Errors) {
  TempDir dir;
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Load(dir.path());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  dir.Write("tokenizer_config.json", R"({"eos_token": "x"})");
  t = ChatTemplate::Load(dir.path());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(t.status().message()).find("chat_template"), std::string::npos);
  dir.Write("tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  t = ChatTemplate::Load(dir.path());
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(t.status().message()).find("tokenizer_config.json"), std::string::npos);
  EXPECT_NE(std::string(t.status().message()).find("line 1, column"), std::string::npos);
  dir.Write("tokenizer_config.json", "{not json");
  EXPECT_EQ(ChatTemplate::Load(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateLoad, KnowsThinkTags) {
  absl::StatusOr<ChatTemplate> qwen3 = ChatTemplate::Load(kData + "/tokenizer-qwen3-0.6b");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_TRUE(qwen3->knows_think_tags());
  absl::StatusOr<ChatTemplate> qwen25 = ChatTemplate::FromString(
      ReadText(kData + "/chat-templates-llama.cpp/Qwen-Qwen2.5-7B-Instruct.jinja"));
  ASSERT_TRUE(qwen25.ok());
  EXPECT_FALSE(qwen25->knows_think_tags());
}

// --- requests

TEST(ChatRequest, MessagesArePreparedAsTransformersDoes) {
  // Null keys are dropped; reasoning_content comes from `reasoning` / `thinking`, and `thinking`
  // is put first.
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromString(
      "{% for m in messages %}{{ m|tojson }}\n{% endfor %}{{ enable_thinking is defined }}");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<ChatRequest> r = ParseChatRequest(Json::parse(R"({"messages": [
      {"role": "user", "content": null, "name": "n"},
      {"role": "assistant", "content": "c", "reasoning": "r"},
      {"role": "assistant", "thinking": "t", "reasoning_content": "rc"}]})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(MustRender(*t, *r),
            "{\"role\": \"user\", \"name\": \"n\"}\n"
            "{\"thinking\": \"r\", \"role\": \"assistant\", \"content\": \"c\", \"reasoning\": "
            "\"r\", \"reasoning_content\": \"r\"}\n"
            "{\"thinking\": \"t\", \"role\": \"assistant\", \"reasoning_content\": \"rc\"}\n"
            "False");
}

TEST(ChatRequest, VariablesAndKwargs) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromString(
      "{{ add_generation_prompt }}|{{ tools }}|{{ documents }}|{{ enable_thinking }}|{{ custom }}");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<ChatRequest> r = ParseChatRequest(Json::parse(R"({
      "messages": [{"role": "user", "content": "x"}], "tools": null, "enable_thinking": false,
      "add_generation_prompt": true, "chat_template_kwargs": {"custom": [1, 2.0]}})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(MustRender(*t, *r), "True|None|None|False|[1, 2.0]");
}

TEST(ChatRequest, BadRequests) {
  for (const char* bad : {R"([])", R"({})", R"({"messages": {}})", R"({"messages": [1]})",
                          R"({"messages": [], "tools": {}})", R"({"messages": [], "tools": [1]})",
                          R"({"messages": [], "add_generation_prompt": 1})",
                          R"({"messages": [], "chat_template_kwargs": 3})"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(ParseChatRequest(Json::parse(bad)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromString("x");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<ChatRequest> empty = ParseChatRequest(Json::parse(R"({"messages": []})"));
  ASSERT_TRUE(empty.ok());
  absl::StatusOr<std::string> text = t->Render(*empty);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(std::string(text.status().message()).find("empty conversation"), std::string::npos);
}

TEST(ChatRequest, DeepNestingIsRefusedNotACrash) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const Json request = Json::parse(R"({"messages": [{"role": "user", "content": )" + deep + "}]}");
  absl::StatusOr<ChatRequest> r = ParseChatRequest(request);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("deeper than 256"), std::string::npos);
  // Built directly, the request is checked when rendered.
  ChatRequest direct;
  direct.messages = Json::array({{{"role", "user"}}});
  Json* inner = &direct.messages[0]["content"];
  for (int i = 0; i < 300; ++i) {
    *inner = Json::array({nullptr});
    inner = &(*inner)[0];
  }
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromString("{{ messages }}");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->Render(direct).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatRequest, TemplateErrorsNameTheTemplateAndPosition) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromString(
      "{%- for m in messages %}\n  {%- if m.role != 'user' %}\n    {{- raise_exception('only "
      "users') }}\n  {%- endif %}\n{%- endfor %}");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<ChatRequest> r = ParseChatRequest(
      Json::parse(R"({"messages": [{"role": "user", "content": "a"}, {"role": "bot"}]})"));
  ASSERT_TRUE(r.ok());
  absl::StatusOr<std::string> text = t->Render(*r);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(text.status().message()),
            "chat template: line 3, column 9: template raised an exception: only users");
}

}  // namespace
}  // namespace tessera
