// SPDX-License-Identifier: Apache-2.0
#pragma once

// The Xen channel as the transport uses it: what libxen gives a user-space
// frontend or backend (xengntshr, xengnttab, xenevtchn, xenstore), behind
// one interface with two implementations selected at run time by name:
//   * "emu": a domain process of the emulator (xenemud), from emulators/xen;
//   * "xen": real Xen through Debian's libxengnttab, libxenevtchn and
//     libxenstore (/dev/xen/*), in dom0 or a driver domain (here).
// The transport (xen_guest.h, xen_server.h) names nothing else of Xen.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/transports/channels.h"
#include "vioport/transports/handover.h"

namespace vioport::xen {

using DomId = uint16_t;
using GrantRef = uint32_t;
using EvtchnPort = uint32_t;

// Pages this domain shares (xengntshr_share_pages): zeroed, contiguous here,
// granted to one domain at the refs listed (refs[i] for page i).
struct SharedPages {
  uint8_t* addr = nullptr;
  std::vector<GrantRef> refs;
  bool writable = false;
};

// One segment of a grant copy (xengnttab_grant_copy_segment_t): one side is
// a grant of another domain, the other a local buffer. Neither side may
// cross a page of the grant (GNTST_bad_copy_arg).
struct GrantCopySegment {
  bool to_foreign = false;  // false: foreign -> local (read); true: local -> foreign (write)
  DomId domid = 0;
  GrantRef ref = 0;
  uint16_t offset = 0;      // within the granted page
  void* local = nullptr;
  uint16_t len = 0;
  int16_t status = 0;       // out: GNTST code
};

// GNTST_* status codes (xen/include/public/grant_table.h).
namespace gntst {
inline constexpr int16_t kOkay = 0;
inline constexpr int16_t kGeneralError = -1;
inline constexpr int16_t kBadDomain = -2;
inline constexpr int16_t kBadGntref = -3;
inline constexpr int16_t kBadHandle = -4;
inline constexpr int16_t kBadVirtAddr = -5;
inline constexpr int16_t kBadDevAddr = -6;
inline constexpr int16_t kNoDeviceSpace = -7;
inline constexpr int16_t kPermissionDenied = -8;
inline constexpr int16_t kBadPage = -9;
inline constexpr int16_t kBadCopyArg = -10;
inline constexpr int16_t kAddressTooBig = -11;
inline constexpr int16_t kEagain = -12;
inline constexpr int16_t kNoSpace = -13;
}  // namespace gntst

// "GNTST_general_error" etc. for a status code; "GNTST_unknown" otherwise.
const char* GntstName(int16_t status);

class XenChannel {
 public:
  virtual ~XenChannel() = default;

  // "xenemud:PATH" or "xen"; for logs.
  virtual std::string name() const = 0;
  // This domain's id.
  virtual DomId self() const = 0;

  // ---- Granting (frontend) -------------------------------------------------
  // `count` zeroed pages granted to `grantee`, device access read-write or
  // read-only. An error (ResourceExhausted) when the pool or the grant table
  // is full.
  virtual absl::StatusOr<SharedPages> SharePages(DomId grantee, uint32_t count, bool writable) = 0;
  // Ends access and gives the pages back. Pages the grantee still maps are
  // kept (Xen refuses to end access while mapped) and retried on later
  // calls; the memory must not be used by the caller any more.
  virtual void UnsharePages(const SharedPages& pages) = 0;

  // ---- Reaching grants (backend) -------------------------------------------
  // Maps one granted page (xengnttab_map_grant_ref). The error's message
  // names the GNTST code (e.g. "GNTST_general_error").
  virtual absl::StatusOr<uint8_t*> MapGrant(DomId granter, GrantRef ref, bool writable) = 0;
  virtual absl::Status UnmapGrant(uint8_t* addr) = 0;
  // Maps consecutive-or-not refs of one granter contiguously here
  // (xengnttab_map_domain_grant_refs): refs[i] at addr + i * 4096.
  virtual absl::StatusOr<uint8_t*> MapGrants(DomId granter, std::span<const GrantRef> refs, bool writable) {
    if (refs.size() == 1) return MapGrant(granter, refs[0], writable);
    return absl::UnimplementedError("this channel maps one grant at a time");
  }
  virtual absl::Status UnmapGrants(uint8_t* addr, uint32_t count) {
    if (count == 1) return UnmapGrant(addr);
    return absl::UnimplementedError("this channel maps one grant at a time");
  }
  // Grant copy; every segment gets its status.
  virtual void GrantCopy(std::span<GrantCopySegment> segments) = 0;
  // Buffers the local side of GrantCopy can use without an intermediate copy
  // (the emulator copies between domains' memory, so a local buffer outside
  // the domain's RAM costs a memcpy more). nullptr when none left; any
  // pointer works in GrantCopy.
  virtual uint8_t* AllocCopyBuffer(size_t bytes) = 0;
  virtual void FreeCopyBuffer(uint8_t* buffer) = 0;

  // ---- Event channels (xenevtchn) -------------------------------------------
  // Readable when ports are pending; PendingPorts() then names them.
  virtual int event_fd() = 0;
  virtual absl::StatusOr<EvtchnPort> BindUnboundPort(DomId remote) = 0;
  virtual absl::StatusOr<EvtchnPort> BindInterdomain(DomId remote, EvtchnPort remote_port) = 0;
  virtual absl::Status Notify(EvtchnPort port) = 0;
  virtual absl::Status Unmask(EvtchnPort port) = 0;
  virtual absl::Status Unbind(EvtchnPort port) = 0;
  // Clears event_fd()'s readiness and appends every pending port (each left
  // masked until Unmask). Call from one thread at a time.
  virtual void PendingPorts(std::vector<EvtchnPort>& out) = 0;

  // ---- xenstore --------------------------------------------------------------
  // The socket libxenstore should use (XENSTORED_PATH); empty for the
  // default (real Xen: /dev/xen/xenbus or xenstored's socket).
  virtual std::string xenstore_path() const = 0;

  // ---- Live upgrade ----------------------------------------------------------
  // What another process needs to be this domain from now on (its
  // connection to the hypervisor), for the channel's ChannelAdopter; only
  // with no grant mapped and no copy buffer taken. The hypervisor sees
  // nothing. Unimplemented where the channel cannot (libxen's handles).
  virtual absl::Status Export(HandoverWriter* /*out*/) const {
    return absl::UnimplementedError(name() + " cannot hand its domain to another process");
  }
};

// How this process joins its channel as a domain. The emulator needs all of
// it; real Xen knows who we are and ignores it.
struct ChannelOptions {
  std::string address;              // the channel's own address (the emulator: xenemud's --domains socket)
  DomId self = 0;                   // which domain this process is (the emulator)
  uint64_t memory_bytes = 8 << 20;  // RAM (grant table, copy buffers)
  uint32_t grant_pages = 0;         // pages this domain can share (frontends)
  uint32_t spin_us = 50;
};
using ChannelFactory = std::function<absl::StatusOr<std::unique_ptr<XenChannel>>(const ChannelOptions&)>;
// By name: "xen" (real Xen, below) always; "emu" where the build has the
// emulator (emulators/xen registers it).
using XenChannels = Channels<ChannelFactory>;
// A channel's other half of Export (by channel name, as XenChannels).
using ChannelAdopter = std::function<absl::StatusOr<std::unique_ptr<XenChannel>>(HandoverReader& in)>;
using XenChannelAdopters = Channels<ChannelAdopter>;
// Opens "NAME" or "NAME:ADDRESS" ("xen", "emu:/run/xen.sock"); the address
// goes into options.address.
absl::StatusOr<std::unique_ptr<XenChannel>> OpenChannel(const std::string& spec, ChannelOptions options);
void RegisterLibxenChannel();

// Real Xen. Fails at once, naming the missing device node (/dev/xen/evtchn,
// /dev/xen/gntdev, /dev/xen/gntalloc, xenstore), where Xen is not running.
absl::StatusOr<std::unique_ptr<XenChannel>> OpenLibxenChannel();

}  // namespace vioport::xen
