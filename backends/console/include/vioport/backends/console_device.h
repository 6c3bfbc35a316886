// SPDX-License-Identifier: Apache-2.0
// virtio-console (§5.3) device with one port and no MULTIPORT: receiveq 0
// carries host bytes to the guest, transmitq 1 guest bytes to the host. The
// host side is a Unix stream socket the device listens on (one client at a
// time) or a pair of already-open fds. Used by vios; runs over any transport.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/console_spec.h"
#include "vioport/core/device.h"

namespace vioport {


struct ConsoleOptions {
  // Either a socket path the device listens on ...
  std::string socket_path;
  // ... or fds it reads from (host -> guest) and writes to (guest -> host).
  // Either may be -1. The device sets O_NONBLOCK on them (and restores the
  // old flags when it is destroyed) but never closes them.
  int in_fd = -1;
  int out_fd = -1;
  // Guest output accepted but not yet written to the host. Above it the
  // device stops taking transmit buffers, so a slow reader slows the guest.
  size_t tx_buffer_limit = size_t{1} << 20;
  uint16_t cols = 80;
  uint16_t rows = 25;
  // Live upgrade: a socket console made without its host side; its
  // predecessor's listener, client and pending bytes come with
  // RestoreHostState (socket_path names the same file; nothing is bound).
  bool adopt = false;
};

class ConsoleDevice final : public VirtioDevice {
 public:
  // Errors name the socket path (or fd) and the errno text. A stale socket
  // file (nobody accepting on it) is replaced; a live one or a non-socket
  // file at the path is an error.
  static absl::StatusOr<std::shared_ptr<ConsoleDevice>> Create(const ConsoleOptions& options);
  ~ConsoleDevice() override;
  ConsoleDevice(const ConsoleDevice&) = delete;
  ConsoleDevice& operator=(const ConsoleDevice&) = delete;

  DeviceId device_id() const override { return DeviceId::kConsole; }
  uint64_t device_features() const override;
  uint16_t num_queues() const override { return 2; }
  uint32_t config_size() const override { return sizeof(console::Config); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;
  // An epoll instance holding the listener and the host fds; readable when
  // one of them needs service.
  int event_fd() const override { return epoll_fd_; }
  bool ProcessEvents() override;
  absl::Status Quiesce() override;
  // Live upgrade (VirtioDevice): a socket console hands over its listener,
  // its client and the bytes it holds either way; one on fds (vios's own
  // stdin/stdout) cannot be handed over while a guest uses it.
  absl::Status CanHandOver() const override;
  absl::Status SaveHostState(std::string* bytes, std::vector<int>* fds) const override;
  absl::Status RestoreHostState(const std::string& bytes, std::vector<int>& fds) override;
  void ReleaseHostState() override;
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const override;

  // Moves the host side to a Unix socket listening on `path` at run time
  // (vios's console_attach): the current client (or the fds) is let go and
  // its unsent output dropped; on error (the path in use, not a socket, too
  // long) nothing changes. The guest sees nothing but a new peer. From the
  // device's thread.
  absl::Status AttachSocket(const std::string& path);
  // Terminal resize (§5.3.6: with SIZE, a config change notification).
  // From the device's thread, like every call above.
  void Resize(uint16_t cols, uint16_t rows);

  // Host bytes read but not yet delivered to the guest (device thread only).
  size_t pending_to_guest() const { return rx_pending_.size(); }
  // Guest bytes accepted but not yet written to the host (device thread only).
  size_t pending_to_host() const { return tx_pending_.size(); }
  // A host peer can take guest output: a socket client is connected, or
  // out_fd is still open.
  bool connected() const { return conn_.out_open; }

 private:
  // A FIFO of bytes: append at the back, consume from the front.
  class ByteQueue {
   public:
    size_t size() const { return bytes_.size() - head_; }
    bool empty() const { return size() == 0; }
    const uint8_t* data() const { return bytes_.data() + head_; }
    // Room for n more bytes at the back; Commit says how many were filled.
    uint8_t* Reserve(size_t n);
    void Commit(size_t reserved, size_t used) { bytes_.resize(bytes_.size() - reserved + used); }
    void Consume(size_t n);
    void Clear() {
      bytes_.clear();
      head_ = 0;
    }

   private:
    std::vector<uint8_t> bytes_;
    size_t head_ = 0;
  };

  // The host end of the port: a socket client (in == out), or the fd pair.
  struct HostConn {
    int in_fd = -1;
    int out_fd = -1;
    bool in_open = false;
    bool out_open = false;
    bool out_is_socket = false;
    bool owned = false;  // a socket client we close; the fd pair is the caller's
  };
  // One epoll membership: an fd and the events it is registered for.
  struct Watch {
    int fd = -1;
    uint32_t events = 0;  // 0: not registered
  };

  explicit ConsoleDevice(const ConsoleOptions& options);
  absl::Status Listen();
  absl::Status UseFds();

  bool AcceptClients();
  void CloseConn(const char* why);
  // Host -> guest: read the input fd while the guest has buffers.
  bool PumpInput();
  bool DeliverRx();
  // Guest -> host.
  bool DrainTx();
  bool ResumeTx();
  bool FlushTx();
  void DropTx();
  // Registers exactly the events the device wants now, so the epoll fd is
  // never readable for something ProcessEvents would not handle.
  void UpdateInterest();
  void SetWatch(Watch& w, int fd, uint32_t events, uint64_t tag);

  ConsoleOptions opts_;
  int epoll_fd_ = -1;
  int listen_fd_ = -1;
  dev_t sock_dev_ = 0;  // the socket file we bound, so we unlink only our own
  ino_t sock_ino_ = 0;
  bool bound_ = false;
  // Original flags of the caller's fds, restored at destruction.
  int in_flags_ = -1;
  int out_flags_ = -1;

  HostConn conn_;
  Watch listen_watch_, in_watch_, out_watch_;

  uint16_t cols_, rows_;
  bool active_ = false;
  ActivateContext ctx_;
  DeviceQueue* rxq_ = nullptr;
  DeviceQueue* txq_ = nullptr;
  // A transmit chain popped but only partly copied (tx_pending_ was full).
  DescriptorChain tx_chain_;
  uint32_t tx_chain_offset_ = 0;
  bool tx_blocked_ = false;  // stopped taking chains: tx_pending_ is at its limit

  ByteQueue rx_pending_;  // host -> guest
  ByteQueue tx_pending_;  // guest -> host

  std::atomic<uint64_t> rx_bytes_{0};
  std::atomic<uint64_t> tx_bytes_{0};
  std::atomic<uint64_t> tx_dropped_{0};
  std::atomic<uint64_t> clients_{0};
  std::atomic<uint64_t> clients_refused_{0};
  std::atomic<uint64_t> bad_requests_{0};
};

}  // namespace vioport
