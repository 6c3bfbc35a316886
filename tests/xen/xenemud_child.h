// SPDX-License-Identifier: Apache-2.0
#pragma once

// xenemud as a child process of a test: started with an argument list,
// stopped with SIGTERM (which must make it exit 0 within `seconds`).

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace vioport::xen::child {

// fork + execv(XENEMUD_BIN, {XENEMUD_BIN, args...}).
inline pid_t SpawnXenemud(const std::vector<std::string>& args) {
  std::vector<std::string> all = {XENEMUD_BIN};
  all.insert(all.end(), args.begin(), args.end());
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(XENEMUD_BIN, argv.data());
    _exit(127);
  }
  return pid;
}

// SIGTERM, then waits; a xenemud that ignores it is killed and a failure
// recorded, as is any exit status but 0.
inline void StopXenemud(pid_t pid, int seconds) {
  kill(pid, SIGTERM);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "xenemud ignored SIGTERM";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

}  // namespace vioport::xen::child
