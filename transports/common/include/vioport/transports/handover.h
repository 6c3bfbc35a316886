// SPDX-License-Identifier: Apache-2.0
// Live upgrade's wire unit: a record of numbers, strings and descriptors
// one vios hands to the next (docs/upgrade.md). A transport's endpoint
// writes what its guest connection needs (HandoverWriter) and its factory
// reads it back in the new process (HandoverReader). Records travel as one
// SOCK_SEQPACKET message each, descriptors as SCM_RIGHTS. The reader checks
// every field against the record's end and the caller's bounds: a record is
// input like any other.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/device_controller.h"
#include "vioport/transports/fd.h"

namespace vioport {

// Largest record (bytes) and most descriptors in one: a record is one
// message, which must fit a Unix socket's default send buffer.
inline constexpr size_t kMaxHandoverRecord = 64 << 10;
inline constexpr size_t kMaxHandoverFds = 250;

class HandoverWriter {
 public:
  void U64(uint64_t v);
  void Str(absl::string_view s);
  void U64s(std::span<const uint64_t> v);
  // The descriptor is sent with the record (the caller keeps it open until then).
  void Fd(int fd);
  void Snapshot(const ControllerSnapshot& s);
  const std::string& bytes() const { return bytes_; }
  const std::vector<int>& fds() const { return fds_; }

 private:
  std::string bytes_;
  std::vector<int> fds_;
};

class HandoverReader {
 public:
  HandoverReader() = default;
  HandoverReader(std::string bytes, std::vector<UniqueFd> fds) : bytes_(std::move(bytes)), fds_(std::move(fds)) {}
  // Each fails (InvalidArgument, naming `what`) past the record's end or
  // beyond the bound.
  absl::Status U64(uint64_t* v, absl::string_view what);
  absl::Status U64(uint64_t* v, uint64_t max, absl::string_view what);
  absl::Status Str(std::string* s, size_t max, absl::string_view what);
  absl::Status U64s(std::vector<uint64_t>* v, size_t max, absl::string_view what);
  absl::Status Fd(UniqueFd* fd, absl::string_view what);
  absl::Status Snapshot(ControllerSnapshot* s, size_t max_queues);
  // Everything was read (no bytes or descriptors left over).
  absl::Status Done() const;

 private:
  absl::Status Take(void* out, size_t n, absl::string_view what);
  std::string bytes_;
  size_t pos_ = 0;
  std::vector<UniqueFd> fds_;
  size_t next_fd_ = 0;
};

// One record as one message on a SOCK_SEQPACKET socket. Send fails
// (InvalidArgument) for a record over the limits.
absl::Status SendHandoverRecord(int sock, const HandoverWriter& w);
// Waits up to `timeout` for the next record.
absl::StatusOr<HandoverReader> RecvHandoverRecord(int sock, absl::Duration timeout);

}  // namespace vioport
