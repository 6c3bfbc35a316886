// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <string>

namespace vioport {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};
const char* Tag(LogLevel l) {
  switch (l) {
    case LogLevel::kError: return "E";
    case LogLevel::kWarning: return "W";
    case LogLevel::kInfo: return "I";
    case LogLevel::kDebug: return "D";
  }
  return "?";
}
}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

bool ParseLogLevel(absl::string_view name, LogLevel* out) {
  if (name == "error") *out = LogLevel::kError;
  else if (name == "warning") *out = LogLevel::kWarning;
  else if (name == "info") *out = LogLevel::kInfo;
  else if (name == "debug") *out = LogLevel::kDebug;
  else return false;
  return true;
}

void LogMessage(LogLevel level, absl::string_view msg) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char when[32];
  strftime(when, sizeof when, "%H:%M:%S", &t);
  // One write per line so lines from several threads do not interleave.
  std::string line = absl::StrCat(Tag(level), " ", when, ".", absl::Dec(ts.tv_nsec / 1000000, absl::kZeroPad3), " ", msg, "\n");
  fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace vioport
