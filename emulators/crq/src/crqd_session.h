// SPDX-License-Identifier: Apache-2.0
#pragma once

// crqd's side of one partition connection as a state machine free of
// sockets, threads and polling: Hello() takes the partition's HELLO (its
// bytes, and whether a memory fd came with it) and, when it is acceptable,
// registers the partition with the shared crq::Hypervisor; Call() takes each
// mailbox request as the words crqd loaded once from shared memory and
// returns the answer; Close() is the partition's death. Whatever needs the
// kernel (checking and mapping the memfd, the interrupt eventfd, pausing
// while a dying connection still holds the id) goes through the Host. crqd
// (tool/crqd.cc) wraps it with its socket and mailbox loop; fuzz_crqd drives
// it directly with hostile input. Wire protocol: crq_remote.h.

#include <cstdint>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/emulators/crq_hypervisor.h"
#include "vioport/emulators/crq_remote.h"

namespace vioport::crq {

// The partition ids connected to one crqd: one connection per id.
// Thread-safe (each connection runs on its own thread).
class PartitionRegistry {
 public:
  bool TryClaim(PartitionId id);
  void Release(PartitionId id);
  std::vector<PartitionId> Ids() const;  // ascending
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::set<PartitionId> ids_;
};

class DaemonSession {
 public:
  // What the session needs from its connection. Called only from the
  // session's methods, on the caller's thread.
  class Host {
   public:
    virtual ~Host() = default;
    // The memory fd that came with HELLO: "" if it is sealed against
    // shrinking and holds `bytes`, else why not (the refusal's text).
    virtual std::string CheckMemory(uint64_t bytes) = 0;
    // Maps `bytes` of that fd read-write; UnmapMemory undoes it.
    virtual absl::StatusOr<uint8_t*> MapMemory(uint64_t bytes) = 0;
    virtual void UnmapMemory(uint8_t* memory, uint64_t bytes) = 0;
    // The partition's interrupt eventfd, owned by the host; -1 for none.
    virtual absl::StatusOr<int> InterruptFd() = 0;
    // Another connection holds the id (maybe a partition that just exited
    // and whose EOF is not read yet): true to try again after a pause,
    // false to refuse.
    virtual bool RetryClaim() = 0;
  };

  struct HelloResult {
    bool accepted = false;
    std::string error;  // when refused: the HelloReply's text
  };

  // `hv` and `registry` are shared by every connection of one crqd.
  DaemonSession(Hypervisor& hv, PartitionRegistry& registry, Host* host)
      : hv_(hv), registry_(registry), host_(host) {}
  ~DaemonSession() { Close(); }
  DaemonSession(const DaemonSession&) = delete;
  DaemonSession& operator=(const DaemonSession&) = delete;

  // The HELLO message as received (anything but sizeof(wire::Hello) bytes
  // is refused) and whether a fd came with it. A refused HELLO leaves
  // nothing behind; a connection says HELLO once (a second one is refused).
  HelloResult Hello(std::span<const uint8_t> bytes, bool memfd_passed);
  // One mailbox request: the opcode and the argument words as loaded (all
  // kMailboxArgs of them; fewer read as 0). The caller is always this
  // connection's partition. Without an accepted HELLO: H_HARDWARE.
  HcallResult Call(uint64_t opcode, std::span<const uint64_t> args);
  // The partition died: removed from the hypervisor (partners see FF 01,
  // copies naming its windows fail), its memory unmapped, its id released.
  // Idempotent; later calls answer H_HARDWARE.
  void Close();

  bool attached() const { return attached_; }
  PartitionId id() const { return id_; }
  uint8_t* memory() const { return mem_; }
  uint64_t memory_bytes() const { return size_; }

 private:
  HelloResult Refuse(std::string why) { return HelloResult{false, std::move(why)}; }

  Hypervisor& hv_;
  PartitionRegistry& registry_;
  Host* host_;
  bool said_hello_ = false;
  bool attached_ = false;
  PartitionId id_ = 0;
  uint8_t* mem_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace vioport::crq
