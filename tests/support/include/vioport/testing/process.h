// SPDX-License-Identifier: Apache-2.0
#pragma once

// Child processes for the whole-system tests: spawn vios / vioguest /
// viosctl, capture their output into files, wait with a deadline; wait for
// a condition; read a whole file.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace vioport::testproc {

struct Proc {
  pid_t pid = -1;
  std::string out_path, err_path;
  int status = -1;  // after Wait
  bool exited = false;

  std::string out() const { return Slurp(out_path); }
  std::string err() const { return Slurp(err_path); }
  static std::string Slurp(const std::string& p) {
    std::ifstream f(p);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }
  // Exit code, 128+signal if killed, -1 on timeout (the child is then killed).
  int Wait(double seconds = 120) {
    if (exited) return status;
    // Never spawned: nothing to wait for (and kill(-1) would signal every process).
    if (pid <= 0) {
      exited = true;
      return status = 127;
    }
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int st = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) break;
      if (std::chrono::steady_clock::now() > end) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
        exited = true;
        status = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    exited = true;
    status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status;
  }
  void Signal(int sig) const {
    if (pid > 0) ::kill(pid, sig);
  }
  bool Running() {
    if (exited || pid <= 0) return false;
    int st;
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      exited = true;
      status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return false;
    }
    return true;
  }
};

// Polls `pred` every 10 ms until it holds (true) or `seconds` pass (false).
template <typename Pred>
inline bool WaitFor(Pred pred, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  uint8_t buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.insert(out.end(), buf, buf + n);
  ::close(fd);
  return out;
}

// Starts argv[0] with the rest as arguments; stdout and stderr go to files
// named after `tag` in `dir`, stdin comes from `stdin_path` (a FIFO lets a
// test type commands into an interactive program).
inline Proc Spawn(const std::vector<std::string>& argv, const std::string& dir, const std::string& tag,
                  const std::string& stdin_path = "/dev/null") {
  static std::atomic<int> counter{0};  // tests spawn from several threads
  const int n = ++counter;
  Proc p;
  p.out_path = dir + "/" + tag + "." + std::to_string(n) + ".out";
  p.err_path = dir + "/" + tag + "." + std::to_string(n) + ".err";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdin_path.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, p.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, p.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  if (::posix_spawn(&p.pid, args[0], &fa, nullptr, args.data(), environ) != 0) p.pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return p;
}

}  // namespace vioport::testproc
