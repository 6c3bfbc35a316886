// SPDX-License-Identifier: Apache-2.0
#include "net_tap.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/core/log.h"

namespace vioport::vios {
namespace {

constexpr size_t kBatch = 64;
constexpr size_t kReadBuffer = net::kHdrSize + net::kMaxGsoFrame + 64;

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

TapUplink::TapUplink(Options options, std::shared_ptr<Switch> sw) : opts_(std::move(options)), sw_(std::move(sw)) {}

absl::StatusOr<std::unique_ptr<TapUplink>> TapUplink::Open(Options o, std::shared_ptr<Switch> sw) {
  if (o.ifname.empty() || o.ifname.size() >= IFNAMSIZ)
    return absl::InvalidArgumentError(absl::StrCat("tap: ifname '", o.ifname, "' must be 1..", IFNAMSIZ - 1, " characters"));
  if (o.queues < 1 || o.queues > 16) return absl::InvalidArgumentError(absl::StrCat("tap: queues=", o.queues, " is not 1..16"));
  std::unique_ptr<TapUplink> t(new TapUplink(o, std::move(sw)));
  for (uint16_t i = 0; i < o.queues; ++i) {
    const int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return Errno("tap: /dev/net/tun");
    t->fds_.push_back(fd);
    struct ifreq ifr {};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (o.queues > 1 ? IFF_MULTI_QUEUE : 0);
    std::strncpy(ifr.ifr_name, o.ifname.c_str(), IFNAMSIZ - 1);
    if (::ioctl(fd, TUNSETIFF, &ifr) < 0) return Errno(absl::StrCat("tap ", o.ifname, ": TUNSETIFF"));
    // VERSION_1 headers are 12 bytes (num_buffers included, ignored by tun).
    int hdr = net::kHdrSize;
    if (::ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) return Errno(absl::StrCat("tap ", o.ifname, ": TUNSETVNETHDRSZ"));
    // No offloads until a guest negotiates some: the host sends whole,
    // checksummed frames.
    if (::ioctl(fd, TUNSETOFFLOAD, 0) < 0) return Errno(absl::StrCat("tap ", o.ifname, ": TUNSETOFFLOAD"));
  }
  t->stop_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (t->stop_fd_ < 0) return Errno("tap: eventfd");
  t->inbox_ = std::make_shared<net::Inbox>();
  if (!t->inbox_->ok()) return Errno("tap: eventfd");
  Switch::PortOptions p;
  p.name = o.id;
  p.inbox = t->inbox_;
  p.vlan = o.vlan;
  p.trunk = o.trunk;
  t->port_ = t->sw_->AddPort(std::move(p));
  t->sw_->SetUplink(t->port_, [raw = t.get()](const net::RxCaps& caps) { raw->SetOffloads(caps); });
  t->buf_.resize(kReadBuffer);
  t->thread_ = std::thread([raw = t.get()] { raw->Run(); });
  VIOPORT_LOG(kInfo, "netdev ", o.id, ": tap ", o.ifname, " with ", o.queues, " queue(s) on switch ", t->sw_->id());
  return t;
}

TapUplink::~TapUplink() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_, &one, sizeof one);
    thread_.join();
  }
  if (sw_ && inbox_) sw_->RemovePort(port_);
  for (int fd : fds_) ::close(fd);
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

void TapUplink::SetOffloads(const net::RxCaps& caps) {
  // The flags say what vios takes from the tap (macvtap: "the userspace
  // wants to accept TSO frames"); TSO counts only with CSUM.
  unsigned flags = 0;
  if (caps.csum) {
    flags |= TUN_F_CSUM;
    if (caps.tso4) flags |= TUN_F_TSO4;
    if (caps.tso6) flags |= TUN_F_TSO6;
    if (caps.ecn && (caps.tso4 || caps.tso6)) flags |= TUN_F_TSO_ECN;
  }
  if (offload_flags_.exchange(flags) == flags) return;
  for (int fd : fds_)
    if (::ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0)
      VIOPORT_LOG(kWarning, "netdev ", opts_.id, ": TUNSETOFFLOAD 0x", absl::Hex(flags), ": ", std::strerror(errno));
}

void TapUplink::Run() {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    VIOPORT_LOG(kError, "netdev ", opts_.id, ": epoll: ", std::strerror(errno));
    return;
  }
  auto add = [&](int fd, uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  for (size_t i = 0; i < fds_.size(); ++i) add(fds_[i], i);
  add(inbox_->event_fd(), 1000);
  add(stop_fd_, 1001);
  for (;;) {
    epoll_event evs[20];
    const int n = ::epoll_wait(ep, evs, 20, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = evs[i].data.u64;
      if (tag == 1001) stop = true;
      else if (tag == 1000) WriteTap();
      else ReadTap(fds_[tag]);
    }
    if (stop) break;
  }
  ::close(ep);
}

bool TapUplink::ReadTap(int fd) {
  // Level-triggered: read a batch, come back through epoll for the rest so
  // the inbox is served in between.
  batch_.clear();
  while (batch_.size() < kBatch) {
    const ssize_t r = ::read(fd, buf_.data(), buf_.size());
    if (r < 0) break;  // EAGAIN (or the tap went away)
    if (static_cast<size_t>(r) < net::kHdrSize + net::kEthHeader) {
      drop_short_++;
      continue;
    }
    net::Frame f;
    std::memcpy(&f.hdr, buf_.data(), net::kHdrSize);
    f.hdr.flags &= static_cast<uint8_t>(~net::kHdrFlagDataValid);  // the kernel vouches; guests check themselves
    f.hdr.num_buffers = 0;
    f.data.assign(buf_.data() + net::kHdrSize, buf_.data() + r);
    const uint64_t offered = net::feature::Bit(net::feature::kCsum) | net::feature::Bit(net::feature::kHostTso4) |
                             net::feature::Bit(net::feature::kHostTso6) | net::feature::Bit(net::feature::kHostEcn);
    if (net::CheckTxHeader(f.hdr, offered, 65535, f.data) != net::Drop::kNone) {
      drop_bad_hdr_++;
      continue;
    }
    rx_packets_++;
    rx_bytes_ += f.data.size();
    batch_.push_back(std::move(f));
  }
  if (!batch_.empty()) sw_->Send(port_, batch_);
  return true;
}

void TapUplink::WriteTap() {
  for (int round = 0; round < 4; ++round) {
    taken_.clear();
    if (inbox_->Take(&taken_, kBatch) == 0) return;
    for (net::Frame& f : taken_) {
      f.hdr.num_buffers = 0;
      iovec iov[2] = {{&f.hdr, net::kHdrSize}, {f.data.data(), f.data.size()}};
      const int fd = fds_.size() == 1 ? fds_[0] : fds_[net::FlowHash(f.data) % fds_.size()];
      if (::writev(fd, iov, 2) < 0) {
        drop_write_++;
        continue;
      }
      tx_packets_++;
      tx_bytes_ += f.data.size();
    }
  }
  inbox_->Wake();  // more than four batches waiting: come back after the reads
}

void TapUplink::AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const {
  out->push_back({"to_host_packets", tx_packets_.load()});
  out->push_back({"to_host_bytes", tx_bytes_.load()});
  out->push_back({"from_host_packets", rx_packets_.load()});
  out->push_back({"from_host_bytes", rx_bytes_.load()});
  out->push_back({"drop_rx_full", inbox_->drops()});
  out->push_back({"drop_short", drop_short_.load()});
  out->push_back({"drop_bad_hdr", drop_bad_hdr_.load()});
  out->push_back({"drop_write", drop_write_.load()});
  out->push_back({"offload_flags", offload_flags_.load()});
}

}  // namespace vioport::vios
