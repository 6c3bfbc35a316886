// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the shm transport's device session (shm::Session,
// transports/shm/src/shm_session.h) as a hostile guest drives it, with no
// socket: HELLOs with any header and any fds (a sealed memfd, an unsealed
// one, one smaller than it claims, a pipe, none, two), register writes at
// any offset, width and value, other message types, scribbles on the shared
// region (rings included) and kicks, and a fresh session after every refusal
// (the server closes the connection then).
//
// Input: a sequence of 16-byte ops {kind u8, a u8, b u16, c u32, d u64}:
//   kind % 6 == 0  HELLO: mmio version a % 4, protocol version (b & 1 ? 1 : b),
//                  region size kSizes[c % 8], fds per d (bit 0 unsealed,
//                  bit 1 a pipe instead, bit 2 smaller than claimed,
//                  bits 8-9: 0, 1 or 2 fds)
//   kind % 6 == 1  REG_WRITE(offset b, width a, value c, seq d)
//   kind % 6 == 2  a message of type c with a % 3 fds
//   kind % 6 == 3  the guest writes the 8 bytes d at offset c of its memory
//                  (the region past the register page)
//   kind % 6 == 4  a kick of queue a
//   kind % 6 == 5  the guest goes: the session is destroyed and a new one made
// Checked besides ASan/UBSan: every answer is what the protocol says (one
// REG_ACK with the write's seq; one WELCOME with 1 + 2 * queues eventfds and
// Attached once, after a good HELLO only); a refused HELLO leaves no
// controller; the mirror keeps the virtio-mmio signature and shows the
// controller's status after every message.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "vioport/core/log.h"
#include "vioport/testing/echo_device.h"
#include "../../transports/shm/src/shm_session.h"

namespace {

using namespace vioport;

constexpr uint64_t kSizes[] = {0, 4096, 64 << 10, (64 << 10) + 1, 128 << 10, 256 << 10, 1 << 20, 64 << 10};

struct Op {
  uint8_t kind, a;
  uint16_t b;
  uint32_t c;
  uint64_t d;
};
static_assert(sizeof(Op) == 16);

struct Host final : shm::Session::Host {
  std::vector<shm::MsgHeader> sent;
  std::vector<size_t> sent_fds;
  int attached = 0;
  size_t kicks = 0;
  absl::Status Send(const shm::MsgHeader& h, std::span<const int> fds) override {
    sent.push_back(h);
    sent_fds.push_back(fds.size());
    for (int fd : fds)
      if (fd < 0) __builtin_trap();  // never send an invalid fd
    return absl::OkStatus();
  }
  void Attached(DeviceController&, std::span<const int> k) override {
    attached++;
    kicks = k.size();
  }
};

UniqueFd Memfd(uint64_t size, bool sealed) {
  UniqueFd fd(::memfd_create("fuzz-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return UniqueFd();
  if (sealed) (void)::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    SetLogLevel(LogLevel::kError);
    return true;
  }();
  (void)quiet;
  auto dev = std::make_shared<testing::EchoDevice>(testing::EchoOptions{.num_queues = 2, .max_queue_size = 64});
  Host host;
  auto session = std::make_unique<shm::Session>(dev, &host, "fuzz", false);
  UniqueFd region;  // the guest's view of the memory it shared
  uint64_t region_size = 0;
  uint8_t* map = nullptr;
  auto guest_gone = [&] {
    session = std::make_unique<shm::Session>(dev, &host, "fuzz", false);
    if (map) ::munmap(map, region_size);
    map = nullptr;
    region.reset();
    host.attached = 0;
  };
  for (size_t off = 0; off + sizeof(Op) <= size; off += sizeof(Op)) {
    Op op;
    std::memcpy(&op, data + off, sizeof op);
    const size_t answers = host.sent.size();
    shm::ReceivedMsg m;
    absl::Status st = absl::OkStatus();
    bool handled = false;
    switch (op.kind % 6) {
      case 0: {
        const uint64_t claimed = kSizes[op.c % 8];
        m.header = shm::Header(shm::MsgType::kHello);
        m.header.offset = op.a % 4;
        m.header.value = claimed;
        m.header.aux = (op.b & 1) ? shm::kProtocolVersion : op.b;
        const int nfds = static_cast<int>((op.d >> 8) % 3);
        UniqueFd mem;
        for (int i = 0; i < nfds; ++i) {
          if (op.d & 2) {
            int p[2];
            if (::pipe2(p, O_CLOEXEC) == 0) {
              ::close(p[1]);
              m.fds.emplace_back(p[0]);
            }
          } else {
            UniqueFd f = Memfd((op.d & 4) && claimed >= 4096 ? claimed - 4096 : claimed, !(op.d & 1));
            if (i == 0 && f.valid()) mem.reset(::dup(f.get()));
            m.fds.push_back(std::move(f));
          }
        }
        const bool had_controller = session->controller() != nullptr;
        st = session->Handle(m);
        handled = true;
        if (st.ok() && !had_controller) {
          // A good HELLO: one WELCOME with every eventfd, and the device attached.
          if (host.sent.size() != answers + 1 || shm::TypeOf(host.sent.back()) != shm::MsgType::kWelcome ||
              host.sent_fds.back() != 1 + 2 * dev->num_queues() || host.attached != 1 ||
              host.kicks != dev->num_queues())
            __builtin_trap();
          region = std::move(mem);
          region_size = claimed;
          void* p = ::mmap(nullptr, claimed, PROT_READ | PROT_WRITE, MAP_SHARED, region.get(), 0);
          map = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
        } else if (!st.ok() && !had_controller && session->controller()) {
          __builtin_trap();  // a refused HELLO must not leave a device attached
        }
        break;
      }
      case 1:
        m.header = shm::Header(shm::MsgType::kRegWrite);
        m.header.offset = op.b;
        m.header.size = op.a;
        m.header.value = op.c;
        m.header.seq = static_cast<uint32_t>(op.d);
        st = session->Handle(m);
        handled = true;
        if (st.ok() && (host.sent.size() != answers + 1 || shm::TypeOf(host.sent.back()) != shm::MsgType::kRegAck ||
                        uint32_t{host.sent.back().seq} != static_cast<uint32_t>(op.d)))
          __builtin_trap();
        break;
      case 2:
        m.header = shm::Header(static_cast<shm::MsgType>(op.c));
        for (int i = 0; i < op.a % 3; ++i) m.fds.push_back(Memfd(4096, true));
        st = session->Handle(m);
        handled = true;
        break;
      case 3:
        // Guest memory only: the register page is the device's to write
        // (a guest scribbling on it fools only itself until the next publish).
        if (map && region_size >= shm::kRegisterPageSize + 8)
          std::memcpy(map + shm::kRegisterPageSize + op.c % (region_size - shm::kRegisterPageSize - 7), &op.d, 8);
        break;
      case 4:
        if (DeviceController* c = session->controller()) c->NotifyQueue(op.a);
        break;
      case 5:
        guest_gone();
        break;
    }
    if (handled && !st.ok()) {
      guest_gone();  // the server drops a guest that broke the protocol
      continue;
    }
    if (DeviceController* c = session->controller(); c && map) {
      if (mmio::Reg32(map, mmio::reg::kMagic).load() != mmio::kMagicValue) __builtin_trap();
      if (mmio::Reg32(map, mmio::reg::kStatus).load() != c->status()) __builtin_trap();
    }
  }
  session.reset();
  if (map) ::munmap(map, region_size);
  return 0;
}
