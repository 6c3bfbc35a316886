// SPDX-License-Identifier: Apache-2.0
// The Xen channel on real Xen (xen_channel.h, docs/transports/xen-real.md):
// Debian's libxengnttab (xengnttab for mapping and copying grants, xengntshr
// for sharing pages), libxenevtchn and libxenstore over /dev/xen/*.
//
// Start-up never crashes where Xen is absent: before any library is opened the
// device nodes are checked and the first missing one is named in a
// FailedPrecondition. The libraries' own logger (stderr by default) is replaced
// by one that forwards to VIOPORT_LOG at debug level and keeps the last message
// of the calling thread for error texts.

#include <errno.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/core/log.h"
#include "vioport/transports/xen_channel.h"

extern "C" {
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>
#include <xentoollog.h>
}

namespace vioport::xen {
namespace {

constexpr size_t kPageSize = 4096;  // XEN_PAGE_SIZE: grants are 4 KiB pages on every architecture
// How long the domid read may wait for xenstore. In dom0 without xenstored,
// /dev/xen/xenbus accepts requests nobody answers; better a clear error.
constexpr absl::Duration kXenstoreTimeout = absl::Seconds(5);

// ---- The libraries' logger ---------------------------------------------------

thread_local std::string tls_last_message;

struct QuietLogger {
  xentoollog_logger base;  // first: the libraries call base.vmessage(&base, ...)
};

void QuietVmessage(xentoollog_logger*, xentoollog_level level, int errnoval, const char* context,
                   const char* format, va_list al) {
  char text[512];
  std::vsnprintf(text, sizeof text, format, al);
  std::string msg = text;
  if (errnoval > 0) absl::StrAppend(&msg, ": ", std::strerror(errnoval));
  if (level >= XTL_ERROR) tls_last_message = msg;
  VIOPORT_LOG(kDebug, "libxen ", context != nullptr ? context : "", ": ", msg);
}

void QuietProgress(xentoollog_logger*, const char*, const char*, int, unsigned long, unsigned long) {}
void QuietDestroy(xentoollog_logger*) {}

// One for the process: the handles keep a pointer to it, and it holds no state.
xentoollog_logger* Logger() {
  static QuietLogger logger{{&QuietVmessage, &QuietProgress, &QuietDestroy}};
  return &logger.base;
}

// "<what> failed: <errno text> (errno N)[; libxen: <last message>]"
std::string Failure(absl::string_view what, int err) {
  std::string s = absl::StrCat(what, " failed: ", std::strerror(err), " (errno ", err, ")");
  if (!tls_last_message.empty()) absl::StrAppend(&s, "; libxen: ", tls_last_message);
  return s;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  if (err == 0) {  // never an OK status for a failure
    std::string s = absl::StrCat(what, " failed (no errno)");
    if (!tls_last_message.empty()) absl::StrAppend(&s, "; libxen: ", tls_last_message);
    return absl::UnknownError(s);
  }
  return absl::ErrnoToStatus(err, Failure(what, err));
}

// ---- Device nodes --------------------------------------------------------------

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Whether Linux says it runs on Xen (CONFIG_XEN_SYS_HYPERVISOR's file).
bool RunningOnXen() {
  std::ifstream in("/sys/hypervisor/type");
  std::string type;
  return in && std::getline(in, type) && type == "xen";
}

std::string MissingDriverText(absl::string_view module) {
  if (RunningOnXen())
    return absl::StrCat("this is a Xen domain but the ", module,
                        " driver is not loaded (modprobe ", module, ")");
  return absl::StrCat("this machine is not running as a Xen domain (/sys/hypervisor/type does not say "
                      "\"xen\"), or the ", module, " driver is not loaded");
}

constexpr absl::string_view kUseEmulator =
    "use the emulator instead (xenemud; vios --attach ...,channel=emu:SOCKET)";

// Exists and is readable and writable by this process.
absl::Status CheckNode(const std::string& path, absl::string_view module, absl::string_view role) {
  if (!Exists(path))
    return absl::FailedPreconditionError(absl::StrCat(
        "real Xen: ", path, " is missing: ", MissingDriverText(module), "; ", role, kUseEmulator));
  if (::access(path.c_str(), R_OK | W_OK) != 0) {
    int err = errno;
    return absl::PermissionDeniedError(absl::StrCat(
        "real Xen: ", path, " exists but cannot be opened for reading and writing (", std::strerror(err),
        "); run vios as root in dom0 or in the driver domain"));
  }
  return absl::OkStatus();
}

// Where libxenstore's xs_open will connect (Xen 4.17 tools/libs/store/xs.c,
// tools/xenstore/xs_lib.c): $XENSTORED_PATH if set (then nothing else), else
// $XENSTORED_RUNDIR/socket (Debian's default run dir /var/run/xenstored), else
// /dev/xen/xenbus, else /proc/xen/xenbus.
std::vector<std::pair<std::string, std::string>> XenstoreCandidates(const std::string& dev_xen) {
  if (const char* p = std::getenv("XENSTORED_PATH"); p != nullptr)
    return {{p, "$XENSTORED_PATH"}};
  const char* rundir = std::getenv("XENSTORED_RUNDIR");
  return {{absl::StrCat(rundir != nullptr ? rundir : "/var/run/xenstored", "/socket"), "xenstored's socket, dom0"},
          {dev_xen + "/xenbus", "the xenbus device, any domain"},
          {"/proc/xen/xenbus", "xenfs"}};
}

absl::Status CheckXenstore(const std::string& dev_xen) {
  auto candidates = XenstoreCandidates(dev_xen);
  for (const auto& [path, what] : candidates)
    if (Exists(path)) return absl::OkStatus();
  if (std::getenv("XENSTORED_PATH") != nullptr)
    return absl::FailedPreconditionError(absl::StrCat(
        "real Xen: xenstore is unreachable: XENSTORED_PATH=", candidates[0].first,
        " does not exist, and libxenstore tries nothing else while XENSTORED_PATH is set; unset it "
        "(it is for the emulator) or point it at xenstored's socket"));
  std::vector<std::string> tried;
  for (const auto& [path, what] : candidates) tried.push_back(absl::StrCat(path, " (", what, ")"));
  return absl::FailedPreconditionError(absl::StrCat(
      "real Xen: xenstore is unreachable: none of ", absl::StrJoin(tried, ", "),
      " exists; in dom0 start xenstored (Debian's xen-utils: systemctl start xen), in a driver domain "
      "the kernel's xenbus driver provides /dev/xen/xenbus; ", kUseEmulator));
}

// ---- Reading our domid ------------------------------------------------------------

// "domid" relative to our home /local/domain/<self>: libxl writes it for every
// domain it creates and xen-init-dom0 for dom0 (Xen 4.17 libxl_dom.c,
// tools/helpers/xen-init-dom0.c); a socket connection's home is
// /local/domain/0.
absl::StatusOr<DomId> ReadSelfDomidBlocking() {
  errno = 0;
  struct xs_handle* xs = xs_open(0);
  if (xs == nullptr) {
    int err = errno != 0 ? errno : ECONNREFUSED;
    return absl::FailedPreconditionError(absl::StrCat(
        "real Xen: xs_open failed: ", std::strerror(err), " (errno ", err,
        "): xenstore does not answer; in dom0 start xenstored (systemctl start xen)"));
  }
  unsigned int len = 0;
  errno = 0;
  char* value = static_cast<char*>(xs_read(xs, XBT_NULL, "domid", &len));
  int err = errno;
  xs_close(xs);
  if (value == nullptr)
    return absl::FailedPreconditionError(absl::StrCat(
        "real Xen: reading this domain's id (xenstore key \"domid\" under /local/domain/<self>) failed: ",
        std::strerror(err), " (errno ", err, "); the toolstack writes it for every domain (xen-init-dom0 for dom0)"));
  std::string text(value, len);
  std::free(value);
  uint32_t id = 0;
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || !absl::SimpleAtoi(text, &id) ||
      id >= DOMID_FIRST_RESERVED)
    return absl::FailedPreconditionError(
        absl::StrCat("real Xen: xenstore key \"domid\" holds \"", text, "\", not a domain id"));
  return static_cast<DomId>(id);
}

// The same with a time limit: the read runs on its own thread, which owns its
// state, so a read that never returns only leaks that thread.
absl::StatusOr<DomId> ReadSelfDomid(absl::Duration timeout) {
  struct State {
    absl::Mutex mu;
    bool done = false;
    absl::StatusOr<DomId> result = absl::UnknownError("not read");
  };
  auto state = std::make_shared<State>();
  try {
    std::thread([state] {
      absl::StatusOr<DomId> r = ReadSelfDomidBlocking();
      absl::MutexLock lock(&state->mu);
      state->result = std::move(r);
      state->done = true;
    }).detach();
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("real Xen: cannot start a thread: ", e.what()));
  }
  absl::MutexLock lock(&state->mu);
  if (!state->mu.AwaitWithTimeout(absl::Condition(&state->done), timeout))
    return absl::DeadlineExceededError(absl::StrCat(
        "real Xen: xenstore did not answer a read of \"domid\" within ", absl::FormatDuration(timeout),
        "; is xenstored running (in dom0: systemctl start xen)?"));
  return state->result;
}

// ---- The channel ----------------------------------------------------------------

class LibxenChannel final : public XenChannel {
 public:
  LibxenChannel(std::string dev_xen, DomId self, xengnttab_handle* gnttab, xenevtchn_handle* evtchn)
      : dev_xen_(std::move(dev_xen)), self_(self), gnttab_(gnttab), evtchn_(evtchn) {}

  ~LibxenChannel() override {
    // Closing unmaps what gntdev still maps, unbinds every port and drops
    // gntalloc's file mappings (pages a peer still maps stay until it unmaps).
    if (gntshr_ != nullptr) xengntshr_close(gntshr_);
    xengnttab_close(gnttab_);
    xenevtchn_close(evtchn_);
  }

  std::string name() const override { return "xen"; }
  DomId self() const override { return self_; }

  absl::StatusOr<SharedPages> SharePages(DomId grantee, uint32_t count, bool writable) override {
    if (count == 0) return absl::InvalidArgumentError("SharePages: no pages asked for");
    if (count > static_cast<uint32_t>(INT32_MAX / kPageSize))
      return absl::ResourceExhaustedError(absl::StrCat("SharePages: ", count, " pages is too many"));
    absl::StatusOr<xengntshr_handle*> gntshr = Gntshr();
    if (!gntshr.ok()) return gntshr.status();
    SharedPages pages;
    pages.refs.resize(count);
    pages.writable = writable;
    tls_last_message.clear();
    errno = 0;
    void* addr = xengntshr_share_pages(*gntshr, grantee, static_cast<int>(count), pages.refs.data(), writable ? 1 : 0);
    if (addr == nullptr) {
      int err = errno != 0 ? errno : ENOMEM;
      std::string what = absl::StrCat("real Xen: xengntshr_share_pages(", count, " pages to domain ", grantee,
                                      writable ? ", writable" : ", read-only", ")");
      if (err == ENOSPC)
        return absl::ResourceExhaustedError(absl::StrCat(
            Failure(what, err), "; gntalloc's system-wide limit (module parameter limit, default 1024 pages) "
                                "or the grant table is full"));
      return ErrnoStatus(err, what);
    }
    pages.addr = static_cast<uint8_t*>(addr);
    return pages;
  }

  void UnsharePages(const SharedPages& pages) override {
    if (pages.addr == nullptr || pages.refs.empty()) return;
    xengntshr_handle* gntshr;
    {
      absl::MutexLock lock(&gntshr_mu_);
      gntshr = gntshr_;
    }
    if (gntshr == nullptr) return;  // never shared anything: not ours
    // munmap; gntalloc ends access itself once the grantee has unmapped too.
    if (xengntshr_unshare(gntshr, pages.addr, static_cast<uint32_t>(pages.refs.size())) != 0) {
      int err = errno;
      VIOPORT_LOG(kWarning, "xen: ", Failure("xengntshr_unshare", err));
    }
  }

  absl::StatusOr<uint8_t*> MapGrant(DomId granter, GrantRef ref, bool writable) override {
    return MapGrants(granter, {&ref, 1}, writable);
  }

  // xengnttab_map_domain_grant_refs: the refs contiguously, in one ioctl.
  absl::StatusOr<uint8_t*> MapGrants(DomId granter, std::span<const GrantRef> refs, bool writable) override {
    if (refs.empty()) return absl::InvalidArgumentError("MapGrants: no refs");
    tls_last_message.clear();
    errno = 0;
    std::vector<uint32_t> r(refs.begin(), refs.end());
    void* addr = xengnttab_map_domain_grant_refs(gnttab_, static_cast<uint32_t>(r.size()), granter, r.data(),
                                                 writable ? PROT_READ | PROT_WRITE : PROT_READ);
    if (addr == nullptr) {
      int err = errno != 0 ? errno : EINVAL;
      // gntdev turns Xen's GNTST code into an errno and does not pass it on.
      std::string what = absl::StrCat("real Xen: xengnttab_map_domain_grant_refs(domain ", granter, ", ref ", refs[0],
                                      refs.size() > 1 ? absl::StrCat("+", refs.size()) : std::string(),
                                      writable ? ", read-write" : ", read-only", ")");
      return absl::ErrnoToStatus(
          err, absl::StrCat(Failure(what, err),
                            "; gntdev reports no GNTST code: EINVAL is usually GNTST_bad_gntref or "
                            "GNTST_general_error (a ref beyond the granter's table, not granted to this "
                            "domain, or read-only mapped for writing)"));
    }
    return static_cast<uint8_t*>(addr);
  }

  absl::Status UnmapGrant(uint8_t* addr) override { return UnmapGrants(addr, 1); }

  absl::Status UnmapGrants(uint8_t* addr, uint32_t count) override {
    if (addr == nullptr) return absl::InvalidArgumentError("UnmapGrants: null address");
    tls_last_message.clear();
    if (xengnttab_unmap(gnttab_, addr, count) != 0) {
      int err = errno;
      return ErrnoStatus(err, absl::StrFormat("real Xen: xengnttab_unmap(%p, %u)", static_cast<void*>(addr), count));
    }
    return absl::OkStatus();
  }

  void GrantCopy(std::span<GrantCopySegment> segments) override {
    std::vector<xengnttab_grant_copy_segment_t> segs;
    std::vector<size_t> index;  // segs[i] is segments[index[i]]
    segs.reserve(segments.size());
    index.reserve(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      GrantCopySegment& s = segments[i];
      // gntdev refuses the whole batch (EINVAL) for a segment crossing the
      // grant's page; answer it alone, as Xen would.
      if (size_t{s.offset} + s.len > kPageSize || (s.local == nullptr && s.len != 0)) {
        s.status = GNTST_bad_copy_arg;
        continue;
      }
      xengnttab_grant_copy_segment_t g{};
      if (s.to_foreign) {
        g.source.virt = s.local;
        g.dest.foreign.ref = s.ref;
        g.dest.foreign.offset = s.offset;
        g.dest.foreign.domid = s.domid;
        g.flags = GNTCOPY_dest_gref;
      } else {
        g.source.foreign.ref = s.ref;
        g.source.foreign.offset = s.offset;
        g.source.foreign.domid = s.domid;
        g.dest.virt = s.local;
        g.flags = GNTCOPY_source_gref;
      }
      g.len = s.len;
      g.status = GNTST_general_error;
      segs.push_back(g);
      index.push_back(i);
    }
    if (segs.empty()) return;
    tls_last_message.clear();
    int rc = xengnttab_grant_copy(gnttab_, static_cast<uint32_t>(segs.size()), segs.data());
    int err = errno;
    for (size_t i = 0; i < segs.size(); ++i) {
      int16_t status = segs[i].status;
      // A failed ioctl may have stopped between writing a segment's status and
      // doing its copy: trust no success then.
      if (rc != 0 && status == GNTST_okay) status = GNTST_general_error;
      segments[index[i]].status = status;
    }
    if (rc != 0) VIOPORT_LOG(kWarning, "xen: ", Failure(absl::StrCat("xengnttab_grant_copy of ", segs.size(), " segments"), err));
  }

  // gntdev's copy pins whatever user pages it is given, so any memory works.
  uint8_t* AllocCopyBuffer(size_t bytes) override {
    size_t rounded = (bytes + kPageSize - 1) / kPageSize * kPageSize;
    if (rounded == 0) rounded = kPageSize;
    return static_cast<uint8_t*>(std::aligned_alloc(kPageSize, rounded));
  }
  void FreeCopyBuffer(uint8_t* buffer) override { std::free(buffer); }

  int event_fd() override { return xenevtchn_fd(evtchn_); }

  absl::StatusOr<EvtchnPort> BindUnboundPort(DomId remote) override {
    tls_last_message.clear();
    xenevtchn_port_or_error_t port = xenevtchn_bind_unbound_port(evtchn_, remote);
    if (port < 0) return ErrnoStatus(errno, absl::StrCat("real Xen: xenevtchn_bind_unbound_port(domain ", remote, ")"));
    return static_cast<EvtchnPort>(port);
  }

  absl::StatusOr<EvtchnPort> BindInterdomain(DomId remote, EvtchnPort remote_port) override {
    tls_last_message.clear();
    xenevtchn_port_or_error_t port = xenevtchn_bind_interdomain(evtchn_, remote, remote_port);
    if (port < 0)
      return ErrnoStatus(errno, absl::StrCat("real Xen: xenevtchn_bind_interdomain(domain ", remote, ", port ",
                                             remote_port, ")"));
    return static_cast<EvtchnPort>(port);
  }

  absl::Status Notify(EvtchnPort port) override {
    tls_last_message.clear();
    if (xenevtchn_notify(evtchn_, port) != 0)
      return ErrnoStatus(errno, absl::StrCat("real Xen: xenevtchn_notify(port ", port, ")"));
    return absl::OkStatus();
  }

  absl::Status Unmask(EvtchnPort port) override {
    tls_last_message.clear();
    if (xenevtchn_unmask(evtchn_, port) != 0)
      return ErrnoStatus(errno, absl::StrCat("real Xen: xenevtchn_unmask(port ", port, ")"));
    return absl::OkStatus();
  }

  absl::Status Unbind(EvtchnPort port) override {
    tls_last_message.clear();
    if (xenevtchn_unbind(evtchn_, port) != 0)
      return ErrnoStatus(errno, absl::StrCat("real Xen: xenevtchn_unbind(port ", port, ")"));
    return absl::OkStatus();
  }

  // The evtchn fd is blocking and its non-blocking mode is unreliable
  // (xenevtchn.h), so poll with no wait before each xenevtchn_pending.
  void PendingPorts(std::vector<EvtchnPort>& out) override {
    int fd = xenevtchn_fd(evtchn_);
    for (;;) {
      struct pollfd p{fd, POLLIN, 0};
      int n = ::poll(&p, 1, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || (p.revents & POLLIN) == 0) return;
      xenevtchn_port_or_error_t port = xenevtchn_pending(evtchn_);
      if (port < 0) {
        if (errno == EINTR) continue;
        return;
      }
      out.push_back(static_cast<EvtchnPort>(port));
    }
  }

  std::string xenstore_path() const override { return ""; }

 private:
  // gntalloc is opened on the first SharePages: only a frontend needs it.
  absl::StatusOr<xengntshr_handle*> Gntshr() {
    absl::MutexLock lock(&gntshr_mu_);
    if (gntshr_ != nullptr) return gntshr_;
    if (absl::Status s = CheckNode(dev_xen_ + "/gntalloc", "xen-gntalloc",
                                   "sharing pages (a frontend's role) needs it, a backend does not; ");
        !s.ok())
      return s;
    tls_last_message.clear();
    errno = 0;
    gntshr_ = xengntshr_open(Logger(), 0);
    if (gntshr_ == nullptr) return ErrnoStatus(errno != 0 ? errno : ENODEV, "real Xen: xengntshr_open");
    return gntshr_;
  }

  const std::string dev_xen_;
  const DomId self_;
  xengnttab_handle* const gnttab_;
  xenevtchn_handle* const evtchn_;
  absl::Mutex gntshr_mu_;
  xengntshr_handle* gntshr_ ABSL_GUARDED_BY(gntshr_mu_) = nullptr;
};

}  // namespace

// Not in a header: the start-up checks with the device directory as a
// parameter, so tests can point them at a scratch directory
// (tests/xen_transport/libxen_channel_test.cc declares them itself).
namespace libxen_internal {

absl::Status CheckStartNodes(const std::string& dev_xen) {
  if (absl::Status s = CheckNode(dev_xen + "/evtchn", "xen-evtchn", ""); !s.ok()) return s;
  if (absl::Status s = CheckNode(dev_xen + "/gntdev", "xen-gntdev", ""); !s.ok()) return s;
  return CheckXenstore(dev_xen);
}

absl::Status CheckGntallocNode(const std::string& dev_xen) {
  return CheckNode(dev_xen + "/gntalloc", "xen-gntalloc",
                   "sharing pages (a frontend's role) needs it, a backend does not; ");
}

absl::StatusOr<DomId> ReadSelfDomid(absl::Duration timeout) { return xen::ReadSelfDomid(timeout); }

}  // namespace libxen_internal

absl::StatusOr<std::unique_ptr<XenChannel>> OpenLibxenChannel() {
  const std::string dev_xen = "/dev/xen";
  if (absl::Status s = libxen_internal::CheckStartNodes(dev_xen); !s.ok()) return s;

  tls_last_message.clear();
  errno = 0;
  xenevtchn_handle* evtchn = xenevtchn_open(Logger(), 0);
  if (evtchn == nullptr)
    return ErrnoStatus(errno != 0 ? errno : ENODEV, "real Xen: xenevtchn_open (/dev/xen/evtchn)");
  tls_last_message.clear();
  errno = 0;
  xengnttab_handle* gnttab = xengnttab_open(Logger(), 0);
  if (gnttab == nullptr) {
    absl::Status s = ErrnoStatus(errno != 0 ? errno : ENODEV, "real Xen: xengnttab_open (/dev/xen/gntdev)");
    xenevtchn_close(evtchn);
    return s;
  }
  // No xengnttab_set_max_grants: current kernels have no such limit per
  // handle (the library takes ENOTTY as success), and older ones could only
  // lower it below gntdev's module-wide limit.

  absl::StatusOr<DomId> self = ReadSelfDomid(kXenstoreTimeout);
  if (!self.ok()) {
    xengnttab_close(gnttab);
    xenevtchn_close(evtchn);
    return self.status();
  }
  return std::unique_ptr<XenChannel>(std::make_unique<LibxenChannel>(dev_xen, *self, gnttab, evtchn));
}

}  // namespace vioport::xen
