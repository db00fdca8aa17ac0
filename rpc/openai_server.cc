#include "rpc/openai_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "rpc/openai_convert.h"

namespace tessera {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(10);

// httplib's TaskQueue with threads started on demand (httplib's own pool starts all at once),
// kept for reuse, at most `max`. Each connection holds one thread while it is open.
class ElasticPool : public httplib::TaskQueue {
 public:
  explicit ElasticPool(size_t max) : max_(max) {}
  ~ElasticPool() override = default;

  void enqueue(std::function<void()> fn) override {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_) {
      threads_.emplace_back([this] { Work(); });
    } else {
      cv_.notify_one();
    }
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      std::function<void()> fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

// NOTE: httplib 0.11 tells a handler nothing about its connection, so a handler that waits for
// a whole (non-streamed) generation finds its socket by the connection's addresses and watches
// it for the peer's FIN: a client that gives up stops costing KV blocks.
int FindConnection(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof(peer), local_len = sizeof(local);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
    auto port_of = [](const sockaddr_storage& a) {
      return ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(a).sin6_port
                                           : reinterpret_cast<const sockaddr_in&>(a).sin_port);
    };
    if (port_of(peer) == req.remote_port && port_of(local) == req.local_port) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

bool PeerClosed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

std::string NewRequestId(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(rng()));
  return absl::StrCat(prefix, hex);
}

// A request's engine streams and response builders, shared with the streaming provider.
struct Generation {
  ApiRequest api;
  int64_t created = 0;
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<ChoiceBuilder> builders;
  std::vector<bool> done;
  absl::Status error;  // the first choice that failed
  bool cancelled = false;

  bool Finished() const {
    for (bool d : done)
      if (!d) return false;
    return true;
  }
  // Collects what the streams have; waits up to kPoll when none had anything.
  // `on_output(i, out)` sees every output.
  template <typename F>
  void Pump(F on_output) {
    bool any = false;
    for (size_t i = 0; i < streams.size(); ++i) {
      EngineOutput out;
      while (!done[i] && streams[i]->Next(&out, std::chrono::milliseconds(0))) {
        any = true;
        Take(i, out, on_output);
      }
    }
    if (any) return;
    for (size_t i = 0; i < streams.size(); ++i) {
      if (done[i]) continue;
      EngineOutput out;
      if (streams[i]->Next(&out, kPoll)) Take(i, out, on_output);
      return;
    }
  }
  template <typename F>
  void Take(size_t i, const EngineOutput& out, F& on_output) {
    if (out.finished) {
      done[i] = true;
      if (out.finish_reason == FinishReason::kError && error.ok()) error = out.status;
      if (out.finish_reason == FinishReason::kCancelled && error.ok() && !cancelled) {
        error = absl::CancelledError("the request was cancelled");
      }
    }
    on_output(i, out);
  }
  // A choice whose forced tool call failed fails the request (false then).
  bool TakeError(const ChoiceBuilder& builder) {
    if (builder.error().ok()) return true;
    if (error.ok()) error = builder.error();
    return false;
  }
  void CancelAll(Engine& engine) {
    cancelled = true;
    for (size_t i = 0; i < api.choices.size(); ++i) {
      if (!done[i]) engine.Cancel(api.choices[i].request_id);
    }
  }
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(const HttpOptions& options, Engine* engine, const Frontend* frontend, Metrics& metrics,
       std::function<bool()> healthy)
      : options_(options),
        engine_(engine),
        frontend_(frontend),
        metrics_(metrics),
        healthy_(std::move(healthy)),
        started_(std::time(nullptr)) {
    context_.frontend = frontend;
    context_.model_names = options.model_names;
    context_.max_model_len = options.max_model_len;
  }

  absl::Status Init() {
    if (!options_.tls_cert.empty() || !options_.tls_key.empty()) {
      if (options_.tls_cert.empty() || options_.tls_key.empty()) {
        return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
      }
      auto ssl =
          std::make_unique<httplib::SSLServer>(options_.tls_cert.c_str(), options_.tls_key.c_str());
      if (!ssl->is_valid()) {
        return absl::InvalidArgumentError(absl::StrCat("cannot load --tls-cert ", options_.tls_cert,
                                                       " / --tls-key ", options_.tls_key));
      }
      server_ = std::move(ssl);
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    httplib::Server& s = *server_;
    const size_t max_threads = static_cast<size_t>(std::max(8, options_.max_threads));
    s.new_task_queue = [max_threads] { return new ElasticPool(max_threads); };
    s.set_read_timeout(options_.read_timeout_s, 0);
    s.set_write_timeout(options_.write_timeout_s, 0);
    s.set_keep_alive_timeout(options_.keep_alive_timeout_s);
    s.set_keep_alive_max_count(static_cast<size_t>(options_.keep_alive_max_count));
    s.set_payload_max_length(options_.max_body_bytes);
    s.set_tcp_nodelay(true);

    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (healthy_()) {
        res.set_content("ok\n", "text/plain");
      } else {
        res.status = 503;
        res.set_content("not serving\n", "text/plain");
      }
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_.Render(), "text/plain; version=0.0.4");
    });
    if (options_.openai) {
      s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
        if (absl::Status auth = Authenticate(req); !auth.ok()) return Reply(res, auth);
        Json models = Json::array();
        for (const std::string& name : options_.model_names) {
          models.push_back({{"id", name},
                            {"object", "model"},
                            {"created", started_},
                            {"owned_by", "tessera"},
                            {"root", options_.model_names[0]},
                            {"parent", nullptr},
                            {"max_model_len", options_.max_model_len}});
        }
        res.set_content(Dump({{"object", "list"}, {"data", std::move(models)}}),
                        "application/json");
      });
      s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
        Generate(ApiKind::kChat, req, res);
      });
      s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
        Generate(ApiKind::kCompletion, req, res);
      });
    }
    s.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) {
            return httplib::Server::HandlerResponse::Unhandled;
          }
          absl::Status status =
              res.status == 404
                  ? absl::NotFoundError(absl::StrCat("no route for ", req.method, " ", req.path))
                  : absl::InvalidArgumentError(absl::StrCat("HTTP ", res.status));
          res.set_content(Dump(ErrorJson(status)), "application/json");
          return httplib::Server::HandlerResponse::Handled;
        }));

    if (options_.port == 0) {
      port_ = s.bind_to_any_port(options_.host);
    } else {
      port_ = s.bind_to_port(options_.host, options_.port) ? options_.port : -1;
    }
    if (port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", options_.host, ":",
                                                 options_.port, " (in use?)"));
    }
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    return absl::OkStatus();
  }

  void Stop() {
    stopping_ = true;
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
  }

  int port() const { return port_; }

 private:
  absl::Status Authenticate(const httplib::Request& req) const {
    if (options_.api_key.empty()) return absl::OkStatus();
    if (req.get_header_value("Authorization") == "Bearer " + options_.api_key) {
      return absl::OkStatus();
    }
    return absl::UnauthenticatedError(
        "missing or wrong API key: send the header 'Authorization: Bearer <key>'");
  }

  static void Reply(httplib::Response& res, const absl::Status& status) {
    res.status = HttpStatusOf(status);
    res.set_content(Dump(ErrorJson(status)), "application/json");
  }

  // A request refused before the engine took it: counted here (the engine counts the rest).
  void Refuse(httplib::Response& res, const absl::Status& status) {
    metrics_.AddError(absl::StatusCodeToString(status.code()));
    Reply(res, status);
  }

  void Generate(ApiKind kind, const httplib::Request& req, httplib::Response& res) {
    if (absl::Status auth = Authenticate(req); !auth.ok()) return Refuse(res, auth);
    auto gen = std::make_shared<Generation>();
    {
      absl::StatusOr<ApiRequest> api = ParseApiRequest(
          kind, req.body, context_, NewRequestId(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-"));
      if (!api.ok()) return Refuse(res, api.status());
      gen->api = *std::move(api);
    }
    gen->created = std::time(nullptr);
    const size_t n = gen->api.choices.size();
    for (size_t i = 0; i < n; ++i) {
      absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_->Submit(gen->api.choices[i]);
      if (!stream.ok()) {
        for (size_t j = 0; j < i; ++j) engine_->Cancel(gen->api.choices[j].request_id);
        return Refuse(res, stream.status());
      }
      gen->streams.push_back(*std::move(stream));
      gen->builders.emplace_back(gen->api, static_cast<int>(i), frontend_->tokenizer);
    }
    gen->done.assign(n, false);
    if (gen->api.stream) return Stream(gen, req, res);

    // Whole response: wait for every choice; a client that leaves cancels them.
    const int fd = FindConnection(req);
    int polls = 0;
    while (!gen->Finished()) {
      gen->Pump([&](size_t i, const EngineOutput& out) {
        gen->builders[i].Add(out);
        gen->TakeError(gen->builders[i]);
      });
      if (!gen->error.ok() && !gen->cancelled) gen->CancelAll(*engine_);
      if (!gen->cancelled && (++polls % 4 == 0) && (PeerClosed(fd) || stopping_)) {
        gen->CancelAll(*engine_);
      }
    }
    if (!gen->error.ok()) return Reply(res, gen->error);
    if (gen->cancelled) return Reply(res, absl::CancelledError("cancelled: the client left"));
    Json body = Envelope(gen->api, false, gen->created);
    body["choices"] = Json::array();
    for (const ChoiceBuilder& b : gen->builders) body["choices"].push_back(b.Choice());
    body["usage"] = UsageJson(gen->builders);
    res.set_content(Dump(body), "application/json");
  }

  void Stream(std::shared_ptr<Generation> gen, const httplib::Request& req,
              httplib::Response& res) {
    const int fd = FindConnection(req);
    auto ended = std::make_shared<bool>(false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, gen, fd, ended](size_t, httplib::DataSink& sink) {
          auto send = [&sink](const Json& j) {
            const std::string event = absl::StrCat("data: ", Dump(j), "\n\n");
            return sink.write(event.data(), event.size());
          };
          std::vector<Json> chunks;
          gen->Pump([&](size_t i, const EngineOutput& out) {
            if (out.finished && out.finish_reason != FinishReason::kStop &&
                out.finish_reason != FinishReason::kLength) {
              return;  // errors and cancellation are reported once, below
            }
            std::vector<Json> deltas = gen->builders[i].Deltas(out);
            if (!gen->TakeError(gen->builders[i])) return;
            for (Json& c : deltas) chunks.push_back(std::move(c));
          });
          for (Json& c : chunks) {
            Json envelope = Envelope(gen->api, true, gen->created);
            envelope["choices"] = Json::array({std::move(c)});
            if (gen->api.include_usage) envelope["usage"] = nullptr;
            if (!send(envelope)) {
              gen->CancelAll(*engine_);  // the client went away
              return false;
            }
          }
          if (!gen->error.ok() && !gen->cancelled) {
            gen->CancelAll(*engine_);
            send(ErrorJson(gen->error));
          }
          if ((PeerClosed(fd) || stopping_) && !gen->cancelled) gen->CancelAll(*engine_);
          if (!gen->Finished()) return true;
          if (gen->cancelled && gen->error.ok()) return false;
          if (gen->api.include_usage && gen->error.ok()) {
            Json envelope = Envelope(gen->api, true, gen->created);
            envelope["choices"] = Json::array();
            envelope["usage"] = UsageJson(gen->builders);
            send(envelope);
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          *ended = true;
          sink.done();
          return true;
        },
        [this, gen, ended](bool) {
          if (!*ended && !gen->Finished()) gen->CancelAll(*engine_);
        });
  }

  HttpOptions options_;
  Engine* engine_;
  const Frontend* frontend_;
  Metrics& metrics_;
  std::function<bool()> healthy_;
  int64_t started_;
  ApiContext context_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  int port_ = 0;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpOptions& options,
                                                              Engine* engine,
                                                              const Frontend* frontend,
                                                              Metrics& metrics,
                                                              std::function<bool()> healthy) {
  if (options.openai && (engine == nullptr || frontend == nullptr)) {
    return absl::InvalidArgumentError("the OpenAI API needs an engine and a frontend");
  }
  if (options.openai && options.model_names.empty()) {
    return absl::InvalidArgumentError("the OpenAI API needs a served model name");
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::make_unique<Impl>(options, engine, frontend, metrics, std::move(healthy));
  if (absl::Status s = server->impl_->Init(); !s.ok()) return s;
  server->port_ = server->impl_->port();
  return server;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (impl_) impl_->Stop();
}

}  // namespace tessera
