// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/xs_client.h"

extern "C" {  // xenstore.h has no C++ guards
#include <xenstore.h>
}

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace vioport::xen {

namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  const int e = errno;
  const std::string msg = absl::StrCat("xenstore ", what, " ", path, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  if (e == EAGAIN) return absl::AbortedError(msg);
  return absl::UnavailableError(msg);
}

// libxenstore reads XENSTORED_PATH when it opens; opening is rare and done
// under this lock so two opens with different paths cannot mix.
absl::Mutex g_env_mu;

}  // namespace

absl::StatusOr<std::unique_ptr<XsClient>> XsClient::Open(const std::string& socket_path) {
  xs_handle* h = nullptr;
  {
    absl::MutexLock l(&g_env_mu);
    const char* old = std::getenv("XENSTORED_PATH");
    const std::string saved = old ? old : "";
    if (!socket_path.empty()) ::setenv("XENSTORED_PATH", socket_path.c_str(), 1);
    h = ::xs_open(socket_path.empty() ? 0 : XS_OPEN_SOCKETONLY);
    const int e = errno;
    if (!socket_path.empty()) {
      if (old) ::setenv("XENSTORED_PATH", saved.c_str(), 1);
      else ::unsetenv("XENSTORED_PATH");
    }
    errno = e;
  }
  if (!h)
    return absl::UnavailableError(absl::StrCat("cannot reach xenstore",
                                               socket_path.empty() ? "" : absl::StrCat(" at ", socket_path), ": ",
                                               std::strerror(errno)));
  return std::unique_ptr<XsClient>(new XsClient(h));
}

XsClient::~XsClient() { ::xs_close(h_); }

absl::StatusOr<std::string> XsClient::Read(const std::string& path, Tx tx) {
  unsigned int len = 0;
  void* v = ::xs_read(h_, tx, path.c_str(), &len);
  if (!v) return Errno("read", path);
  std::string out(static_cast<const char*>(v), len);
  std::free(v);
  return out;
}

absl::Status XsClient::Write(const std::string& path, const std::string& value, Tx tx) {
  if (!::xs_write(h_, tx, path.c_str(), value.data(), static_cast<unsigned>(value.size()))) return Errno("write", path);
  return absl::OkStatus();
}

absl::Status XsClient::Mkdir(const std::string& path, Tx tx) {
  if (!::xs_mkdir(h_, tx, path.c_str())) return Errno("mkdir", path);
  return absl::OkStatus();
}

absl::Status XsClient::Rm(const std::string& path, Tx tx) {
  if (!::xs_rm(h_, tx, path.c_str()) && errno != ENOENT) return Errno("rm", path);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> XsClient::Directory(const std::string& path, Tx tx) {
  unsigned int n = 0;
  char** d = ::xs_directory(h_, tx, path.c_str(), &n);
  if (!d) return Errno("directory", path);
  std::vector<std::string> out(d, d + n);
  std::free(d);
  return out;
}

absl::Status XsClient::SetPermissions(const std::string& path, const std::vector<Perm>& perms, Tx tx) {
  std::vector<xs_permissions> p;
  for (const Perm& x : perms) {
    unsigned int a = XS_PERM_NONE;
    if (x.access == 'r') a = XS_PERM_READ;
    else if (x.access == 'w') a = XS_PERM_WRITE;
    else if (x.access == 'b') a = XS_PERM_READ | XS_PERM_WRITE;
    p.push_back({x.domid, a});
  }
  if (!::xs_set_permissions(h_, tx, path.c_str(), p.data(), static_cast<unsigned>(p.size())))
    return Errno("set permissions", path);
  return absl::OkStatus();
}

absl::StatusOr<XsClient::Tx> XsClient::Begin() {
  const xs_transaction_t t = ::xs_transaction_start(h_);
  if (t == XBT_NULL) return Errno("transaction start", "");
  return static_cast<Tx>(t);
}

absl::Status XsClient::Commit(Tx tx) {
  if (!::xs_transaction_end(h_, tx, false)) return Errno("transaction commit", "");
  return absl::OkStatus();
}

void XsClient::Abort(Tx tx) { (void)::xs_transaction_end(h_, tx, true); }

absl::Status XsClient::Watch(const std::string& path, const std::string& token) {
  if (!::xs_watch(h_, path.c_str(), token.c_str())) return Errno("watch", path);
  return absl::OkStatus();
}

absl::Status XsClient::Unwatch(const std::string& path, const std::string& token) {
  if (!::xs_unwatch(h_, path.c_str(), token.c_str())) return Errno("unwatch", path);
  return absl::OkStatus();
}

int XsClient::fd() { return ::xs_fileno(h_); }

std::optional<std::pair<std::string, std::string>> XsClient::ReadWatch() {
  char** w = ::xs_check_watch(h_);
  if (!w) return std::nullopt;
  std::pair<std::string, std::string> out(w[XS_WATCH_PATH], w[XS_WATCH_TOKEN]);
  std::free(w);
  return out;
}

std::optional<uint64_t> ParseDecimal(const std::string& s, uint64_t max) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (d > max || v > (max - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace vioport::xen
