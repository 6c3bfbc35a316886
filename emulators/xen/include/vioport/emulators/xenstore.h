// SPDX-License-Identifier: Apache-2.0
// xen::XenStore: the xenstore daemon's state and request semantics, without
// any I/O (modelled on Xen 4.17's C xenstored; see docs/reference/xen.md,
// section 4). A connection is an identity (a domid; 0 = the privileged
// toolstack domain) plus a sink that receives every message xenstored would
// write to it: the reply to each request (same req_id and tx_id, exactly one
// per request) and asynchronous WATCH_EVENTs (req_id = tx_id = 0).
//
// What it models:
//  * the node tree: value bytes, a permission list [(domid, n|r|w|b)] whose
//    first entry is the owner and the default for domains not listed, a
//    generation count; "/", "/local", "/local/domain", "/tool" exist at start;
//  * DIRECTORY, DIRECTORY_PART, READ, GET_PERMS, WRITE (creates missing
//    parents, which inherit the parent's permissions; an unprivileged creator
//    becomes the owner), MKDIR, RM (a missing node is OK if its parent
//    exists; "/" is EINVAL), SET_PERMS (owner or dom0 only; an unprivileged
//    domain may not give a node away: EPERM), GET_DOMAIN_PATH, INTRODUCE,
//    RELEASE, IS_DOMAIN_INTRODUCED, RESET_WATCHES; CONTROL, RESUME and
//    SET_TARGET are privileged and answered EINVAL / ENOSYS;
//  * relative paths are rooted at /local/domain/<domid>;
//  * permissions: dom0 bypasses them; a missing node reports EACCES rather
//    than ENOENT when the caller may not access its nearest existing parent;
//  * watches: fire once on registration, then for the path and everything
//    below it; RM fires for every removed node; an unprivileged watcher only
//    hears about nodes it may read; @introduceDomain / @releaseDomain;
//  * transactions: a private copy-on-write view; commit fails with EAGAIN if
//    any node the transaction read or wrote changed meanwhile (generation
//    count), and the transaction's watch events fire only on commit;
//  * quotas for unprivileged domains (4.17 defaults): 1000 nodes per domain
//    (ENOSPC), 2048 bytes per node incl. permissions and child names
//    (ENOSPC), 5 permissions per node (ENOSPC), 128 watches per connection
//    (E2BIG), 10 open transactions per connection (ENOSPC), relative part of
//    a path 2048 chars (EINVAL); for everyone: absolute paths 3072 (EINVAL),
//    replies larger than 4096 bytes (E2BIG).
//  * errors are XS_ERROR replies carrying the errno name ("ENOENT\0");
//    unknown or reply-only message types get ENOSYS (as C xenstored).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vioport/emulators/xenstore_wire.h"

namespace vioport::xen {

inline constexpr uint8_t kPermNone = 0;
inline constexpr uint8_t kPermRead = 1;
inline constexpr uint8_t kPermWrite = 2;
inline constexpr uint8_t kPermBoth = 3;

struct XsPerm {
  uint32_t domid = 0;
  uint8_t perm = kPermNone;  // kPerm* bits
  bool operator==(const XsPerm&) const = default;
};
// "r5" <-> {5, kPermRead}; letters n, r, w, b. nullopt on malformed input.
std::optional<XsPerm> ParseXsPerm(std::string_view s);
std::string FormatXsPerm(const XsPerm& p);

struct XenStoreLimits {
  uint32_t nodes_per_domain = 1000;
  uint32_t node_size = 2048;
  uint32_t perms_per_node = 5;
  uint32_t watches_per_connection = 128;
  uint32_t transactions_per_connection = 10;
};

class XenStore {
 public:
  using ConnId = uint64_t;
  // Receives every message for one connection, already encoded for the wire
  // (header + payload). Called synchronously from HandleMessage, also for
  // connections other than the requester's (watch events). The sink must not
  // call back into the XenStore.
  using Sink = std::function<void(const XsHeader& hdr, std::string_view payload)>;

  explicit XenStore(XenStoreLimits limits = {});
  ~XenStore();
  XenStore(const XenStore&) = delete;
  XenStore& operator=(const XenStore&) = delete;

  // A connection acting as `domid` (0 = privileged). Domains other than 0
  // need not be introduced to connect.
  ConnId Connect(uint32_t domid, Sink sink);
  // Drops the connection's watches and aborts its transactions.
  void Disconnect(ConnId conn);

  // One request: exactly one reply goes to the connection's sink, then any
  // watch events (to any connection). Payloads over kXsPayloadMax are the
  // transport's business (it closes the connection); here they get EINVAL.
  void HandleMessage(ConnId conn, const XsHeader& hdr, std::string_view payload);

  // What a toolstack does when a domain appears / goes away: marks it
  // introduced (IS_DOMAIN_INTRODUCED), creates /local/domain/<domid> owned
  // by the domain (others: no access) if missing, fires @introduceDomain;
  // Release fires @releaseDomain and removes /local/domain/<domid>.
  void IntroduceDomain(uint32_t domid);
  void ReleaseDomain(uint32_t domid);
  bool IsIntroduced(uint32_t domid) const;

  // Inspection for tests and tools (no permission checks, no transaction).
  std::optional<std::string> Read(std::string_view abs_path) const;
  std::optional<std::vector<XsPerm>> Perms(std::string_view abs_path) const;
  std::optional<std::vector<std::string>> Children(std::string_view abs_path) const;
  uint32_t NodesOwnedBy(uint32_t domid) const;
  size_t NodeCount() const;
  size_t ConnectionCount() const;
  size_t WatchCount(ConnId conn) const;
  size_t TransactionCount(ConnId conn) const;

  static std::string DomainPath(uint32_t domid);

  // Implementation detail (xenstore.cc): the tree, connections, watches,
  // transactions. Public only so the .cc's helpers can name it.
  struct State;

 private:
  std::unique_ptr<State> s_;
};

}  // namespace vioport::xen
