// SPDX-License-Identifier: Apache-2.0
#pragma once

// Shared by the whole-system tests that run vioguest processes: reading the
// tools' "result key=value ..." lines, and checking a backing file against
// the seeded pattern (guest/common/include/vioport/guest/pattern.h).

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "vioport/guest/pattern.h"

namespace vioport::testproc {

// "result device=blk op=write ... checksum=..." -> value of `key` ("" if absent).
inline std::string Field(const std::string& out, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!absl::StartsWith(line, "result ")) continue;
    for (absl::string_view kv : absl::StrSplit(line, ' '))
      if (absl::StartsWith(kv, key + "=")) return std::string(kv.substr(key.size() + 1));
  }
  return "";
}

// `viosctl stats ID` output -> the value of counter ID.NAME (~0 if absent).
inline uint64_t StatValue(const std::string& stats, const std::string& id, const std::string& name) {
  const std::string key = id + "." + name;
  for (absl::string_view line : absl::StrSplit(stats, '\n')) {
    std::vector<absl::string_view> kv = absl::StrSplit(line, ' ');
    uint64_t v;
    if (kv.size() == 2 && kv[0] == key && absl::SimpleAtoi(kv[1], &v)) return v;
  }
  return ~0ull;
}

// Checks [offset, offset+length) of a backing file against the seeded
// pattern: *mismatch = first differing byte (or short read), -1 if none.
// Returns the range's Checksum64 as 16 hex digits, as the tools print it.
inline std::string CheckFile(const std::string& path, uint64_t seed, uint64_t offset, uint64_t length,
                             int64_t* mismatch) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  std::vector<uint8_t> buf(1 << 20);
  pattern::Checksum64 sum;
  *mismatch = -1;
  for (uint64_t done = 0; done < length;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
    if (::pread(fd, buf.data(), n, static_cast<off_t>(offset + done)) != static_cast<ssize_t>(n)) {
      *mismatch = static_cast<int64_t>(offset + done);
      break;
    }
    if (*mismatch < 0) *mismatch = pattern::FirstMismatch(seed, offset + done, {buf.data(), n});
    sum.Add({buf.data(), n});
    done += n;
  }
  if (fd >= 0) ::close(fd);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(sum.Value()));
  return hex;
}

}  // namespace vioport::testproc
