// SPDX-License-Identifier: Apache-2.0
#pragma once

// A small C++ face on libxenstore (xs_open and friends), the same code for
// real Xen and for the emulator (whose xenstored speaks the real wire
// protocol on a socket named by XENSTORED_PATH). Thread-safe as libxenstore
// is: one request at a time per handle, watch events read from fd().

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct xs_handle;

namespace vioport::xen {

class XsClient {
 public:
  // `socket_path` empty: libxenstore's default (xenstored's socket or
  // /dev/xen/xenbus); otherwise that socket.
  static absl::StatusOr<std::unique_ptr<XsClient>> Open(const std::string& socket_path);
  ~XsClient();

  using Tx = uint32_t;  // xs_transaction_t; 0 = none
  static constexpr Tx kNoTx = 0;

  // NotFound when the node does not exist; other errors name errno.
  absl::StatusOr<std::string> Read(const std::string& path, Tx tx = kNoTx);
  absl::Status Write(const std::string& path, const std::string& value, Tx tx = kNoTx);
  absl::Status Mkdir(const std::string& path, Tx tx = kNoTx);
  absl::Status Rm(const std::string& path, Tx tx = kNoTx);
  absl::StatusOr<std::vector<std::string>> Directory(const std::string& path, Tx tx = kNoTx);
  // perms[0] is the owner (and the access of everyone not listed); then
  // {domid, "r"|"w"|"b"|"n"} entries, as xenstore-chmod spells them.
  struct Perm {
    uint32_t domid;
    char access;  // 'n', 'r', 'w', 'b'
  };
  absl::Status SetPermissions(const std::string& path, const std::vector<Perm>& perms, Tx tx = kNoTx);
  absl::StatusOr<Tx> Begin();
  // Aborted when the store says EAGAIN (retry the transaction).
  absl::Status Commit(Tx tx);
  void Abort(Tx tx);

  absl::Status Watch(const std::string& path, const std::string& token);
  absl::Status Unwatch(const std::string& path, const std::string& token);
  // Readable when watch events are queued; then drain ReadWatch().
  int fd();
  // The next queued event {path, token}, without blocking; nullopt if none.
  std::optional<std::pair<std::string, std::string>> ReadWatch();

 private:
  explicit XsClient(xs_handle* h) : h_(h) {}
  xs_handle* h_;
};

// Strict decimal: the whole string, no sign, no spaces, <= max.
std::optional<uint64_t> ParseDecimal(const std::string& s, uint64_t max);

}  // namespace vioport::xen
