// SPDX-License-Identifier: Apache-2.0
#include "net_switch.h"

#include <algorithm>
#include <cstring>

#include "vioport/core/log.h"

namespace vioport::vios {
namespace {

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

// 802.1Q: remove the tag after the MAC addresses (the offload offsets move with it).
void StripTag(net::Frame& f) {
  f.data.erase(f.data.begin() + 12, f.data.begin() + 16);
  if (f.hdr.flags & net::kHdrFlagNeedsCsum) f.hdr.csum_start = static_cast<uint16_t>(f.hdr.csum_start - 4);
}

void AddTag(net::Frame& f, uint16_t vlan) {
  const uint8_t tag[4] = {0x81, 0x00, static_cast<uint8_t>(vlan >> 8), static_cast<uint8_t>(vlan)};
  f.data.insert(f.data.begin() + 12, tag, tag + 4);
  if (f.hdr.flags & net::kHdrFlagNeedsCsum) f.hdr.csum_start = static_cast<uint16_t>(f.hdr.csum_start + 4);
}

}  // namespace

Switch::Switch(Options options)
    : opts_(std::move(options)),
      refresh_ns_(std::min<int64_t>(absl::ToInt64Nanoseconds(opts_.aging) / 8, 1000000000)) {}

uint32_t Switch::AddPort(PortOptions port) {
  absl::MutexLock l(&ports_mu_);
  auto p = std::make_unique<Port>();
  p->o = std::move(port);
  p->live = true;
  // Reuse a departed port's number only if nothing could still name it:
  // numbers are never reused, a switch's ports are few.
  ports_.push_back(std::move(p));
  return static_cast<uint32_t>(ports_.size() - 1);
}

void Switch::RemovePort(uint32_t port) {
  {
    absl::MutexLock l(&ports_mu_);
    if (port >= ports_.size()) return;
    ports_[port]->live = false;
    ports_[port]->o.inbox.reset();
    ports_[port]->on_caps = nullptr;
    if (ports_[port]->has_caps) {
      ports_[port]->has_caps = false;
      PublishCaps();
    }
  }
  absl::MutexLock l(&fdb_mu_);
  for (auto it = fdb_.begin(); it != fdb_.end();) {
    auto cur = it++;
    if (cur->second.port.load(std::memory_order_relaxed) == port) fdb_.erase(cur);
  }
}

void Switch::SetPortCaps(uint32_t port, const net::RxCaps* caps) {
  absl::MutexLock l(&ports_mu_);
  if (port >= ports_.size() || !ports_[port]->live) return;
  ports_[port]->has_caps = caps != nullptr;
  if (caps) ports_[port]->caps = *caps;
  PublishCaps();
}

void Switch::SetUplink(uint32_t port, std::function<void(const net::RxCaps&)> on_caps) {
  absl::MutexLock l(&ports_mu_);
  if (port >= ports_.size()) return;
  ports_[port]->on_caps = std::move(on_caps);
  PublishCaps();
}

void Switch::PublishCaps() {
  // The union: the host's big frames go whole to the guests that take
  // them; the others' ports segment or checksum them.
  net::RxCaps u;
  u.csum = u.tso4 = u.tso6 = u.ecn = u.uso = false;
  for (const auto& p : ports_) {
    if (!p->live || !p->has_caps) continue;
    u.csum |= p->caps.csum;
    u.tso4 |= p->caps.tso4;
    u.tso6 |= p->caps.tso6;
    u.ecn |= p->caps.ecn;
  }
  for (const auto& p : ports_)
    if (p->live && p->on_caps) p->on_caps(u);
}

Switch::PortStats Switch::Stats(uint32_t port) const {
  absl::ReaderMutexLock l(&ports_mu_);
  PortStats s;
  if (port >= ports_.size()) return s;
  const Port& p = *ports_[port];
  s.spoofed = p.spoofed.load();
  s.bad_source = p.bad_source.load();
  s.vlan_drops = p.vlan_drops.load();
  s.flooded = p.flooded.load();
  s.unicast = p.unicast.load();
  return s;
}

size_t Switch::learnt() const {
  absl::ReaderMutexLock l(&fdb_mu_);
  return fdb_.size();
}

size_t Switch::num_ports() const {
  absl::ReaderMutexLock l(&ports_mu_);
  size_t n = 0;
  for (const auto& p : ports_) n += p->live;
  return n;
}

void Switch::Send(uint32_t from, std::vector<net::Frame>& frames) {
  absl::ReaderMutexLock pl(&ports_mu_);
  if (from >= ports_.size() || !ports_[from]->live) return;
  Port& src = *ports_[from];
  const size_t nports = ports_.size();
  // Frames per destination, handed over with one inbox lock each.
  thread_local std::vector<std::vector<net::Frame>> out;
  if (out.size() < nports) out.resize(nports);
  const int64_t now = absl::GetCurrentTimeNanos();
  const int64_t aging = absl::ToInt64Nanoseconds(opts_.aging);
  // Sources to learn once the batch is through (new, or new on this port).
  thread_local std::vector<uint64_t> learn;
  learn.clear();
  {
    absl::ReaderMutexLock fl(&fdb_mu_);
    uint64_t last_key = ~0ull;  // not a key: VLANs stop at 4095
    uint64_t last_dkey = ~0ull;
    int32_t last_dst = -1;
    for (net::Frame& f : frames) {
      if (f.data.size() < net::kEthHeader) {
        src.bad_source++;
        continue;
      }
      const net::Mac smac = net::MacFromBytes(f.data.data() + 6);
      const net::Mac dmac = net::MacFromBytes(f.data.data());
      if (net::IsMulticast(smac) || smac == 0) {
        src.bad_source++;
        continue;
      }
      if (src.o.mac_lock && smac != src.o.mac) {
        src.spoofed++;
        continue;
      }
      // The frame's VLAN inside the switch.
      uint16_t vlan = src.o.vlan;
      const bool tagged = Be16(&f.data[12]) == net::kEtherTypeVlan;
      if (src.o.trunk) {
        if (tagged) {
          if (f.data.size() < net::kEthHeader + net::kVlanTagLen) {
            src.vlan_drops++;
            continue;
          }
          vlan = Be16(&f.data[14]) & 0xfff;
          if (vlan == 0xfff) {
            src.vlan_drops++;
            continue;
          }
          StripTag(f);  // VID 0 (priority-tagged) is the untagged VLAN
        } else {
          vlan = 0;
        }
      } else if (tagged && src.o.vlan != 0) {
        src.vlan_drops++;  // an access port's guest does not choose its VLAN
        continue;
      }
      // Learn (a batch is mostly one source: look it up once). Known on
      // this port: its time is refreshed here; otherwise after the batch.
      const uint64_t skey = Key(vlan, smac);
      if (skey != last_key) {
        last_key = skey;
        auto it = fdb_.find(skey);
        if (it != fdb_.end() && it->second.port.load(std::memory_order_relaxed) == from) {
          if (now - it->second.seen_ns.load(std::memory_order_relaxed) >= refresh_ns_)
            it->second.seen_ns.store(now, std::memory_order_relaxed);
        } else if (learn.empty() || learn.back() != skey) {
          learn.push_back(skey);
        }
      }
      // Forward.
      int32_t dst = -1;
      if (!net::IsMulticast(dmac)) {
        const uint64_t dkey = Key(vlan, dmac);
        if (dkey == last_dkey) {
          dst = last_dst;  // same destination as the frame before, table unchanged
        } else {
          auto d = fdb_.find(dkey);
          if (d != fdb_.end()) {
            const uint32_t port = d->second.port.load(std::memory_order_relaxed);
            if (now - d->second.seen_ns.load(std::memory_order_relaxed) <= aging && port < nports &&
                ports_[port]->live)
              dst = static_cast<int32_t>(port);
          }
          last_dkey = dkey;
          last_dst = dst;
        }
      }
      auto in_vlan = [&](const Port& p) { return p.o.trunk || p.o.vlan == vlan; };
      // A guest on an untagged port may tag its own frames (VLANs of its
      // own among untagged ports), but never onto a trunk: that would put
      // it in a VLAN the operator did not give it.
      const bool own_tag = vlan == 0 && tagged && !src.o.trunk;
      auto deliver = [&](uint32_t q, net::Frame&& fr) {
        if (ports_[q]->o.trunk) {
          if (own_tag) {
            src.vlan_drops++;
            return;
          }
          if (vlan != 0) AddTag(fr, vlan);
        }
        out[q].push_back(std::move(fr));
      };
      if (dst >= 0) {
        if (static_cast<uint32_t>(dst) != from && in_vlan(*ports_[dst])) deliver(dst, std::move(f));
        src.unicast++;
        continue;
      }
      src.flooded++;
      int32_t last = -1;
      for (uint32_t q = 0; q < nports; ++q) {
        if (q == from || !ports_[q]->live || !in_vlan(*ports_[q])) continue;
        if (last >= 0) deliver(last, net::Frame(f));
        last = static_cast<int32_t>(q);
      }
      if (last >= 0) deliver(last, std::move(f));
    }
  }
  if (!learn.empty()) {
    absl::MutexLock fl(&fdb_mu_);
    for (uint64_t key : learn) Learn(key, from, now);
  }
  for (uint32_t q = 0; q < nports; ++q) {
    if (out[q].empty()) continue;
    if (ports_[q]->live && ports_[q]->o.inbox) ports_[q]->o.inbox->Push(from, out[q]);
    out[q].clear();
  }
}

void Switch::Learn(uint64_t key, uint32_t port, int64_t now_ns) {
  auto it = fdb_.find(key);
  if (it == fdb_.end()) {
    if (fdb_.size() >= opts_.max_macs) {
      // Full: make room from entries that aged out, else do not learn.
      const int64_t aging = absl::ToInt64Nanoseconds(opts_.aging);
      for (auto e = fdb_.begin(); e != fdb_.end();) {
        auto cur = e++;
        if (now_ns - cur->second.seen_ns.load(std::memory_order_relaxed) > aging) fdb_.erase(cur);
      }
      if (fdb_.size() >= opts_.max_macs) return;
    }
    it = fdb_.try_emplace(key).first;
  }
  it->second.port.store(port, std::memory_order_relaxed);
  it->second.seen_ns.store(now_ns, std::memory_order_relaxed);
}

}  // namespace vioport::vios
