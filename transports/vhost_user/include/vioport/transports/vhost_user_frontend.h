// SPDX-License-Identifier: Apache-2.0
#pragma once

// VmmFrontend: a vhost-user front-end that plays the VMM, as QEMU does for a
// guest, so any vhost-user back-end (vios, qemu-storage-daemon, a DPDK or
// rust-vmm daemon) can be driven from a process with no VM:
//
//   * guest RAM is a memfd (sealed against shrinking) mapped in this process;
//     guest-physical addresses start at a configurable base. A VMM whose
//     back-end restarted reconnects with a new VmmFrontend over the same RAM
//     (VmmFrontendOptions::memory_fd / memory_map), so the rings in it carry on;
//   * Connect() performs QEMU's connect-time exchange: GET_FEATURES,
//     GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER (and
//     GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS);
//   * the caller then runs the start-time exchange with SetFeatures,
//     SetMemTable, SetupInflight (or, reconnecting, SetInflight with the
//     region kept from the first connection), StartVring per ring and then
//     EnableVring per ring (QEMU's order), and stops rings with
//     StopVring (GET_VRING_BASE) and the device with ResetDevice;
//   * kick = a write to the ring's kick eventfd; call = the ring's call
//     eventfd, waited on with WaitCall; the ring's ERR eventfd is watched;
//   * a monitor thread notices the back-end hanging up and ERR signals; it
//     then signals every call eventfd, so whoever waits wakes up and looks.
//
// With REPLY_ACK negotiated every set-up message carries NEED_REPLY and the
// answer is checked. Every call returns a status whose message names the
// request that failed. Requests are serialised (one in flight); Kick and
// WaitCall may be called from any thread at any time.
//
// The messages are QEMU's docs/interop/vhost-user.rst; the codec is
// vhost_user_protocol.h.

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "vioport/transports/vhost_user_protocol.h"

namespace vioport::vhost_user {

inline constexpr uint64_t ProtoBit(unsigned bit) { return uint64_t{1} << bit; }

struct VmmFrontendOptions {
  std::string socket_path;
  uint64_t memory_bytes = 64 << 20;   // guest RAM, whole pages
  uint64_t guest_phys_base = 0;       // guest-physical address of its first byte (page aligned)
  // A network device: GET_QUEUE_NUM counts queue pairs, and this front-end
  // passes the control queue (after the last pair) to the back-end too.
  bool net = false;
  absl::Duration connect_timeout = absl::Seconds(5);  // the back-end may still be starting
  absl::Duration reply_timeout = absl::Seconds(10);
  // Protocol features taken when the back-end offers them.
  uint64_t wanted_protocol_features = ProtoBit(proto::kMq) | ProtoBit(proto::kReplyAck) | ProtoBit(proto::kConfig) |
                                      ProtoBit(proto::kInflightShmfd) | ProtoBit(proto::kResetDevice) |
                                      ProtoBit(proto::kConfigureMemSlots);
  // With CONFIGURE_MEM_SLOTS negotiated: register the RAM with ADD_MEM_REG
  // (once per connection) instead of SET_MEM_TABLE.
  bool add_mem_reg = false;
  // Guest RAM that outlives this connection (a VMM reconnecting to a restarted
  // back-end): instead of creating a memfd, use `memory_fd`, a file of at
  // least memory_bytes that the back-end can map (a memfd). The front-end
  // works on a duplicate; the caller keeps its own fd. -1: create fresh RAM.
  int memory_fd = -1;
  // With memory_fd: its existing mapping in this process (memory_bytes long,
  // the caller's, which must keep it mapped while the front-end lives), so
  // memory() is the same pointer the rings were built at. Null: the front-end
  // maps memory_fd itself (another view of the same bytes) and unmaps it.
  uint8_t* memory_map = nullptr;
};

// The in-flight region as GET_INFLIGHT_FD described it and SET_INFLIGHT_FD
// hands it back (the fd travels separately).
struct InflightRegion {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
};

// One ring for StartVring. Addresses are guest-physical: SET_VRING_ADDR
// carries front-end virtual addresses, so StartVring translates them.
struct VringSetup {
  uint32_t size = 0;
  uint64_t desc = 0;    // descriptor table / packed ring
  uint64_t avail = 0;   // driver area (split avail ring / packed driver event suppression)
  uint64_t used = 0;    // device area (split used ring / packed device event suppression)
  bool packed = false;
  // SET_VRING_BASE's num. Split: the next avail index (0 for a new ring).
  // Packed: last_avail_idx | avail_wrap << 15 | (used_idx | used_wrap << 15) << 16,
  // as QEMU sends it (a new ring: 0x80008000). kDefaultBase picks the new-ring value.
  uint32_t base = kDefaultBase;
  static constexpr uint32_t kDefaultBase = ~0u;
};

class VmmFrontend {
 public:
  // At most this many queues (the u64 ring payloads carry 8 bits of index).
  static constexpr uint32_t kMaxQueues = 256;

  // Maps the RAM, connects (retrying a missing or refusing socket until
  // connect_timeout) and runs the connect-time exchange.
  static absl::StatusOr<std::unique_ptr<VmmFrontend>> Connect(const VmmFrontendOptions& options);
  // Closes the connection (the back-end sees the front-end go) and unmaps.
  ~VmmFrontend();
  VmmFrontend(const VmmFrontend&) = delete;
  VmmFrontend& operator=(const VmmFrontend&) = delete;

  // ---- what Connect learnt
  uint64_t device_features() const { return device_features_; }  // GET_FEATURES, bit 30 included
  uint64_t offered_protocol_features() const { return offered_protocol_; }
  uint64_t protocol_features() const { return protocol_; }  // negotiated
  bool has_protocol_feature(unsigned bit) const { return protocol_ & ProtoBit(bit); }
  uint16_t num_queues() const { return static_cast<uint16_t>(kick_.size()); }  // GET_QUEUE_NUM, 1 without MQ
  uint64_t max_mem_slots() const { return max_mem_slots_; }  // GET_MAX_MEM_SLOTS; 0 if not asked

  // ---- guest RAM
  uint8_t* memory() const { return map_; }
  uint64_t memory_size() const { return size_; }
  uint64_t guest_phys_base() const { return base_; }
  int memory_fd() const { return memfd_; }
  // Host pointer for [gpa, gpa + len), or nullptr if that is not all RAM.
  uint8_t* Translate(uint64_t gpa, uint64_t len) const;

  // ---- requests (each names itself in its error)
  // GET_CONFIG of [offset, offset + size); needs CONFIG. A reply of another
  // size (0 is the back-end's "error") is an error.
  absl::StatusOr<std::vector<uint8_t>> GetConfig(uint32_t offset, uint32_t size);
  absl::Status SetConfig(uint32_t offset, std::span<const uint8_t> data);
  // SET_FEATURES; adds PROTOCOL_FEATURES (bit 30) when protocol features
  // were negotiated, as the protocol requires.
  absl::Status SetFeatures(uint64_t features);
  uint64_t acked_features() const { return acked_features_; }
  // SET_MEM_TABLE with the one region (or ADD_MEM_REG, see the options).
  absl::Status SetMemTable();
  // GET_INFLIGHT_FD + SET_INFLIGHT_FD for `queues` rings of up to
  // `queue_size` entries; a fresh region each call. OK and nothing sent
  // without INFLIGHT_SHMFD.
  absl::Status SetupInflight(uint16_t queues, uint16_t queue_size);
  // SET_INFLIGHT_FD alone, with a region kept from an earlier connection
  // (`fd` and `region` as inflight_fd() and inflight_region() were there), as
  // QEMU does on every start after the first: a back-end restarted after a
  // crash recovers the requests the region records. `fd` is duplicated (the
  // caller keeps its own). OK and nothing sent without INFLIGHT_SHMFD.
  absl::Status SetInflight(int fd, const InflightRegion& region);
  // The region in use (the last SetupInflight or SetInflight), -1 / zeros
  // before. Owned by the front-end: dup() the fd to keep it past the connection.
  int inflight_fd() const { return inflight_fd_; }
  const InflightRegion& inflight_region() const { return inflight_region_; }
  // SET_VRING_NUM, BASE, ADDR, CALL, ERR, KICK (the first kick starts the
  // ring). With protocol features the ring also needs EnableVring: QEMU
  // starts every ring first and then enables them all, and so does
  // VhostUserDriverTransport (some back-ends start a device only once all
  // of its rings are set up).
  absl::Status StartVring(uint16_t q, const VringSetup& ring);
  // SET_VRING_ENABLE; nothing is sent (OK) without protocol features, where
  // SET_FEATURES enabled the rings.
  absl::Status EnableVring(uint16_t q, bool enable);
  // SET_VRING_ENABLE(0) (with protocol features), then GET_VRING_BASE, which
  // stops the ring; returns the base the back-end reported.
  absl::StatusOr<uint32_t> StopVring(uint16_t q);
  bool started(uint16_t q) const { return q < started_.size() && started_[q]; }
  // RESET_DEVICE; Unimplemented unless negotiated.
  absl::Status ResetDevice();

  // Any request: sends `req` (with NEED_REPLY if `need_reply`) and, if
  // `want_reply` or `need_reply`, returns the reply (for NEED_REPLY, the u64
  // ack is left for the caller to check). For tests of a back-end's refusals.
  absl::StatusOr<Message> Call(Req req, std::span<const uint8_t> payload, std::span<const int> fds, bool want_reply,
                               bool need_reply = false);

  // ---- notifications
  void Kick(uint16_t q);
  // Waits until q's call eventfd fires (or `timeout`), after polling it for
  // `spin` first; consumes the signal. True if it fired, and at once when
  // the back-end is gone (check alive()).
  bool WaitCall(uint16_t q, absl::Duration timeout, absl::Duration spin = absl::ZeroDuration());
  int kick_fd(uint16_t q) const { return kick_[q]; }
  int call_fd(uint16_t q) const { return call_[q]; }
  int err_fd(uint16_t q) const { return err_[q]; }

  // ---- failure
  bool alive() const { return !dead_.load(std::memory_order_acquire); }
  std::string failure() const;  // why the connection is gone (empty while alive)
  // Bit min(q, 63): q's ERR eventfd fired since the last ClearRingErrors().
  uint64_t ring_errors() const { return ring_errors_.load(std::memory_order_acquire); }
  void ClearRingErrors() { ring_errors_.store(0, std::memory_order_release); }

 private:
  explicit VmmFrontend(const VmmFrontendOptions& o) : opts_(o) {}
  absl::Status Setup();
  absl::StatusOr<Message> CallLocked(Req req, uint32_t flags, std::span<const uint8_t> payload,
                                     std::span<const int> fds, bool want_reply) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A set-up message: with REPLY_ACK, NEED_REPLY and a check of the answer.
  absl::Status Send(Req req, std::span<const uint8_t> payload, std::span<const int> fds = {});
  absl::Status SendLocked(Req req, std::span<const uint8_t> payload, std::span<const int> fds)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  template <typename T>
  absl::StatusOr<T> GetValue(Req req, std::span<const uint8_t> payload = {});
  void MarkDead(const std::string& why);
  void WakeAll();
  void Monitor();

  VmmFrontendOptions opts_;
  int sock_ = -1;
  int memfd_ = -1;
  uint8_t* map_ = nullptr;
  bool own_map_ = true;  // false: memory_map borrowed from the caller
  uint64_t size_ = 0, base_ = 0;
  uint64_t device_features_ = 0, offered_protocol_ = 0, protocol_ = 0, acked_features_ = 0;
  uint64_t max_mem_slots_ = 0;
  bool mem_added_ = false;
  int inflight_fd_ = -1;
  InflightRegion inflight_region_;
  std::vector<int> kick_, call_, err_;
  std::vector<bool> started_;

  absl::Mutex mu_;  // one request in flight
  MessageReader reader_ ABSL_GUARDED_BY(mu_);

  std::atomic<uint32_t> last_req_{0};  // for the hang-up message
  std::atomic<bool> dead_{false};
  std::atomic<uint64_t> ring_errors_{0};
  mutable absl::Mutex why_mu_;
  std::string why_ ABSL_GUARDED_BY(why_mu_);
  int stop_fd_ = -1;
  std::thread monitor_;
};

}  // namespace vioport::vhost_user
