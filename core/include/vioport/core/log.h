// SPDX-License-Identifier: Apache-2.0
// Levelled logging to stderr for every vioport program and library.
// (Debian 12's Abseil, 20220623, predates absl/log; this is the small part we need.)
#pragma once

#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"

namespace vioport {

enum class LogLevel : int { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "error", "warning", "info", "debug"; false on anything else.
bool ParseLogLevel(absl::string_view name, LogLevel* out);
void LogMessage(LogLevel level, absl::string_view msg);

}  // namespace vioport

// VIOPORT_LOG(kWarning, "queue ", q, " broken: ", why);
#define VIOPORT_LOG(level, ...)                                                       \
  do {                                                                                \
    if (static_cast<int>(::vioport::LogLevel::level) <=                               \
        static_cast<int>(::vioport::GetLogLevel()))                                   \
      ::vioport::LogMessage(::vioport::LogLevel::level, ::absl::StrCat(__VA_ARGS__)); \
  } while (0)
