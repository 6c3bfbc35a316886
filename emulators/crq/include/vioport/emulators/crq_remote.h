// SPDX-License-Identifier: Apache-2.0
#pragma once

// A partition process connected to the emulator daemon (crqd): the
// hypervisor is its own process and every hypercall is a message.
//
// Wire protocol (Unix SOCK_SEQPACKET, host byte order, one struct per message):
//   partition -> crqd  Hello{kHelloMagic, kWireVersion, id, memory_bytes}
//                      + SCM_RIGHTS: the partition's RAM memfd, which must be
//                      sealed F_SEAL_SHRINK (else refused: a partition that
//                      could shrink it would make the hypervisor fault)
//   crqd -> partition  HelloReply{kHelloMagic, status (0 = accepted), error text}
//                      + SCM_RIGHTS: the interrupt eventfd (only if accepted)
//   crqd -> partition  MailboxReply{kHelloMagic} + SCM_RIGHTS: a memfd holding
//                      the partition's Mailbox (only if accepted)
// then every hypercall goes through the Mailbox, shared memory between the
// partition and crqd: the partition writes opcode and arguments and bumps
// request_seq; crqd, polling it, runs the call, writes rc/r4 and sets
// response_seq to the same number. A side that stops polling says so
// (server_sleeping / client_sleeping) and sleeps in poll() on the socket;
// the other wakes it with a one-byte kick message. No syscall on a call
// while both sides poll, as a hypercall on hardware is a trap on the
// caller's own CPU, not a message to another process.
// The caller's identity is the connection's HELLO id, never a message field.
// Closing the connection is the partition's death: crqd removes it (partners
// see FF 01) and unmaps its memory. One connection per partition id at a time.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/emulators/hcall_mailbox.h"
#include "vioport/emulators/crq_partition.h"

namespace vioport::crq {

namespace wire {
inline constexpr uint32_t kHelloMagic = 0x43525144;  // "CRQD"
inline constexpr uint32_t kWireVersion = 2;
inline constexpr size_t kMaxArgs = emu::kMailboxArgs;

struct Hello {
  uint32_t magic = kHelloMagic;
  uint32_t version = kWireVersion;
  uint32_t partition = 0;
  uint32_t reserved = 0;
  uint64_t memory_bytes = 0;
};
struct HelloReply {
  uint32_t magic = kHelloMagic;
  int32_t status = 0;  // 0 = accepted
  char error[120] = {};
};
struct MailboxReply {
  uint32_t magic = kHelloMagic;
  uint32_t bytes = 0;  // size of the mailbox memfd
};
// One per partition, in a memfd crqd creates (the layout and the
// poll-then-sleep protocol are shared with xenemud: hcall_mailbox.h).
using Mailbox = emu::Mailbox;
inline constexpr size_t kMailboxBytes = emu::kMailboxBytes;
using emu::wire::Kick;
using emu::wire::RecvWithFd;
using emu::wire::SendWithFd;
using emu::wire::SleepOnSocket;
}  // namespace wire

struct RemotePartitionOptions {
  std::string socket_path;  // crqd --socket
  PartitionId id = 0;
  uint64_t memory_bytes = 0;  // whole 4 KiB pages
  // Connecting is retried until this elapses (crqd may still be starting).
  std::chrono::milliseconds connect_timeout{5000};
  // How long a hypercall polls the mailbox for crqd's answer before sleeping.
  std::chrono::microseconds spin{50};
};

class RemotePartition final : public Partition {
 public:
  // Creates and seals the memfd RAM, connects, says HELLO, receives the
  // interrupt eventfd. Fails if crqd refuses (e.g. the id is already connected).
  static absl::StatusOr<std::unique_ptr<RemotePartition>> Connect(const RemotePartitionOptions& options);
  ~RemotePartition() override;  // closes the connection: crqd removes the partition

  // One request and one response. Serialised by a mutex. Once crqd has gone
  // (or Disconnect), every call returns H_HARDWARE.
  HcallResult Hcall(uint64_t opcode, std::span<const uint64_t> args) override;
  uint8_t* memory() const override { return mem_; }
  uint64_t memory_size() const override { return size_; }
  // The eventfd crqd writes on interrupt edges; also written here once crqd
  // is gone, so waiters wake and find every hypercall failing.
  int interrupt_fd() const override { return irq_fd_; }

  PartitionId id() const { return id_; }
  bool connected() const override { return !dead_.load(std::memory_order_acquire); }
  // Live upgrade: the connection, memory, interrupt eventfd and hypercall
  // mailbox go to another process (Adopt there); crqd never notices.
  absl::Status Export(HandoverWriter* out) const override;
  static absl::StatusOr<std::unique_ptr<RemotePartition>> Adopt(HandoverReader& in);
  // Closes the connection now (the partition "dies" for the hypervisor); the
  // memory stays mapped here until destruction.
  void Disconnect();

 private:
  RemotePartition() = default;
  void MarkDead();
  // The thread that notices crqd's death without a call in flight.
  absl::Status StartWatcher();
  void Watch();

  PartitionId id_ = 0;
  int memfd_ = -1, irq_fd_ = -1, wake_fd_ = -1;
  uint8_t* mem_ = nullptr;
  uint64_t size_ = 0;
  wire::Mailbox* mailbox_ = nullptr;
  size_t mailbox_bytes_ = 0;
  int mailbox_fd_ = -1;  // kept for a live upgrade
  uint32_t seq_ = 0;
  bool resync_seq_ = false;  // adopted: read the sequence at the first call
  std::chrono::microseconds spin_{0};
  absl::Mutex mu_;  // one hypercall at a time; guards the socket's lifetime
  int sock_ ABSL_GUARDED_BY(mu_) = -1;
  std::atomic<bool> dead_{false};
  std::thread watcher_;  // notices crqd's death without a call in flight
};

}  // namespace vioport::crq

namespace vioport {
// Registers RemotePartition as the CRQ channel "crqd" (crqd=SOCKET in vios's
// options, crq:SOCKET in vioguest's).
void RegisterCrqdChannel();
}  // namespace vioport
