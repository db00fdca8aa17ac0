// Starts `mpirun -np N tessera serve ...` as a real job for tests, and talks to it with the real
// gRPC client. The job gets its own process group, so a test can always tear it down.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "rpc/client.h"

extern char** environ;

namespace tessera::testing {

class ServerJob {
 public:
  // `args` follow `tessera serve`; ports and the port file are added here.
  ServerJob(int ranks, std::vector<std::string> args, bool expect_ready = true) {
    // A fresh directory each time: a name made of the pid alone can meet a port file left by an
    // earlier process with the same pid, and the clients would then dial a dead port.
    std::string templ = ::testing::TempDir() + "/serve-XXXXXX";
    EXPECT_NE(mkdtemp(templ.data()), nullptr) << templ;
    dir_ = templ;
    port_file_ = dir_ + "/port";
    log_ = dir_ + "/serve.log";
    std::vector<std::string> argv = {TESSERA_MPIRUN,
                                     "--oversubscribe",
                                     "--allow-run-as-root",
                                     "--bind-to",
                                     "none",
                                     "-np",
                                     std::to_string(ranks),
                                     TESSERA_BINARY,
                                     "serve",
                                     "--device",  // CPU numerics; a later --device in `args` wins
                                     "cpu",
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     "0",
                                     "--metrics-port",
                                     "0",
                                     "--http-port",
                                     "0",
                                     "--port-file",
                                     port_file_};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    EXPECT_EQ(posix_spawnp(&mpirun_pid_, cargv[0], &actions, &attr, cargv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (!expect_ready) return;
    for (int i = 0; i < 600 && !ready(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(ready()) << "server did not start:\n" << Log();
  }
  ~ServerJob() {
    if (mpirun_pid_ > 0 && !exited_) {
      kill(-mpirun_pid_, SIGKILL);
      int status;
      waitpid(mpirun_pid_, &status, 0);
    }
    const std::string rm = "rm -rf " + dir_;
    if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir_.c_str());
  }

  bool ready() {
    std::ifstream in(port_file_);
    return static_cast<bool>(in >> grpc_port_ >> metrics_port_ >> rank0_pid_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int rank0_pid() const { return rank0_pid_; }
  int metrics_port() const { return metrics_port_; }
  pid_t mpirun_pid() const { return mpirun_pid_; }
  std::unique_ptr<Client> MakeClient(const std::string& api_key = "") const {
    ClientOptions options;
    options.address = address();
    options.api_key = api_key;
    return std::make_unique<Client>(options);
  }
  // Waits for mpirun to end; returns its exit code (or -1 on timeout, -2 if killed by a signal).
  int Wait(std::chrono::seconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      int status;
      const pid_t r = waitpid(mpirun_pid_, &status, WNOHANG);
      if (r == mpirun_pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // GET /metrics; the value of a sample with no labels but model_name (or -1).
  double Metric(const std::string& name) const {
    const std::string cmd =
        "curl -s http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics";
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) return -1;
    char line[4096];
    double value = -1;
    while (fgets(line, sizeof(line), pipe)) {
      const std::string l(line);
      if (l.rfind(name + " ", 0) == 0) value = std::stod(l.substr(name.size() + 1));
      const std::string labelled = name + "{model_name=\"";
      const size_t close = l.find("} ");
      if (l.rfind(labelled, 0) == 0 && close != std::string::npos &&
          l.find(',', labelled.size()) > close) {
        value = std::stod(l.substr(close + 2));
      }
    }
    pclose(pipe);
    return value;
  }
  // Resident memory of rank 0, in KiB.
  long Rss() const {
    std::ifstream in("/proc/" + std::to_string(rank0_pid_) + "/status");
    std::string key;
    long value = -1;
    while (in >> key) {
      if (key == "VmRSS:") {
        in >> value;
        break;
      }
    }
    return value;
  }

 private:
  std::string dir_, port_file_, log_;
  pid_t mpirun_pid_ = -1;
  int grpc_port_ = 0, metrics_port_ = 0, rank0_pid_ = 0;
  bool exited_ = false;
};

}  // namespace tessera::testing
