// SPDX-License-Identifier: Apache-2.0
#include "upgrade_records.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vioport::vios {

void PutHello(HandoverWriter& w, uint64_t pid, uint64_t devices, int control_fd) {
  w.U64(kHello);
  w.U64(kHandoverMagic);
  w.U64(kHandoverVersion);
  w.U64(pid);
  w.U64(devices);
  w.Fd(control_fd);
}

absl::Status GetHello(HandoverReader& r, HelloRecord* out) {
  uint64_t kind = 0, magic = 0;
  if (absl::Status s = r.U64(&kind, "record kind"); !s.ok()) return s;
  if (absl::Status s = r.U64(&magic, "magic"); !s.ok()) return s;
  if (kind != kHello || magic != kHandoverMagic) return absl::InvalidArgumentError("not a vios handover");
  if (absl::Status s = r.U64(&out->version, "version"); !s.ok()) return s;
  if (out->version < 1 || out->version > kHandoverVersion)
    return absl::InvalidArgumentError(
        absl::StrCat("handover version ", out->version, " (this vios speaks 1 to ", kHandoverVersion, ")"));
  if (absl::Status s = r.U64(&out->pid, "pid"); !s.ok()) return s;
  if (absl::Status s = r.U64(&out->devices, kMaxHandoverDevices, "device count"); !s.ok()) return s;
  if (absl::Status s = r.Fd(&out->control, "control socket"); !s.ok()) return s;
  return r.Done();
}

void PutDeviceHead(HandoverWriter& w, const DeviceHead& d) {
  w.U64(kDevice);
  w.Str(d.id);
  w.Str(d.type);
  PutOptions(w, d.options);
}

absl::Status GetDeviceHead(HandoverReader& r, DeviceHead* out) {
  uint64_t kind = 0;
  if (absl::Status s = r.U64(&kind, "record kind"); !s.ok()) return s;
  if (kind == kAbort) {
    std::string why;
    (void)r.Str(&why, kMaxRecordText, "reason");
    return absl::AbortedError(absl::StrCat("the running vios stopped the upgrade: ", why));
  }
  if (kind != kDevice) return absl::InvalidArgumentError(absl::StrCat("record kind ", kind, " where a device was due"));
  if (absl::Status s = r.Str(&out->id, kMaxRecordText, "device id"); !s.ok()) return s;
  if (absl::Status s = r.Str(&out->type, kMaxRecordText, "device type"); !s.ok()) return s;
  return GetOptions(r, &out->options);
}

void PutAttachHead(HandoverWriter& w, const AttachHead& a) {
  w.U64(a.attached ? 1 : 0);
  if (!a.attached) return;
  w.Str(a.transport);
  PutOptions(w, a.options);
  w.U64(a.frozen_ns);
}

void PutHostState(HandoverWriter& w, const std::string& bytes, const std::vector<int>& fds) {
  w.Str(bytes);
  w.U64(fds.size());
  for (int fd : fds) w.Fd(fd);
}

absl::Status GetHostState(HandoverReader& r, std::string* bytes, std::vector<int>* fds) {
  uint64_t n = 0;
  if (absl::Status s = r.Str(bytes, kMaxHandoverRecord, "host state"); !s.ok()) return s;
  if (absl::Status s = r.U64(&n, kMaxHostStateFds, "host state descriptors"); !s.ok()) return s;
  for (uint64_t i = 0; i < n; ++i) {
    UniqueFd fd;
    if (absl::Status s = r.Fd(&fd, "host state descriptor"); !s.ok()) {
      for (int f : *fds) ::close(f);
      fds->clear();
      return s;
    }
    fds->push_back(fd.release());
  }
  return absl::OkStatus();
}

absl::Status GetAttachHead(HandoverReader& r, AttachHead* out) {
  uint64_t attached = 0;
  if (absl::Status s = r.U64(&attached, 1, "attached"); !s.ok()) return s;
  out->attached = attached != 0;
  if (!out->attached) return absl::OkStatus();
  if (absl::Status s = r.Str(&out->transport, kMaxRecordText, "transport"); !s.ok()) return s;
  if (absl::Status s = GetOptions(r, &out->options); !s.ok()) return s;
  return r.U64(&out->frozen_ns, "freeze time");
}

void PutStats(HandoverWriter& w, const DeviceStats* ds) {
  w.U64(ds ? 1 : 0);
  if (!ds) return;
  w.U64(ds->num_queues());
  for (uint16_t q = 0; q < ds->num_queues(); ++q) {
    const QueueStats* qs = ds->queue(q);
    w.U64(qs->requests.load());
    w.U64(qs->bytes_in.load());
    w.U64(qs->bytes_out.load());
  }
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) w.U64(ds->latency().bucket(b));
  w.U64(ds->latency().sum_ns());
  for (uint64_t v : {uint64_t{ds->spin_us.load()}, ds->busy_polls.load(), ds->busy_poll_ns.load(),
                     ds->busy_poll_found.load(), uint64_t{ds->coalesce_delay_us.load()},
                     uint64_t{ds->coalesce_iops_threshold.load()}, ds->interrupts_sent.load(),
                     ds->interrupts_coalesced.load()})
    w.U64(v);
}

absl::Status GetStats(HandoverReader& r, DeviceStats& ds) {
  uint64_t present = 0, nq = 0;
  if (absl::Status s = r.U64(&present, 1, "stats present"); !s.ok()) return s;
  if (!present) return absl::OkStatus();
  if (absl::Status s = r.U64(&nq, 65535, "stats queue count"); !s.ok()) return s;
  if (nq != ds.num_queues())
    return absl::InvalidArgumentError(absl::StrCat("stats for ", nq, " queues, the device has ", ds.num_queues()));
  auto u64 = [&](uint64_t* v, const char* what, uint64_t max = ~uint64_t{0}) { return r.U64(v, max, what); };
  for (uint16_t q = 0; q < nq; ++q) {
    uint64_t req = 0, in = 0, out = 0;
    for (auto [v, what] : {std::pair{&req, "queue requests"}, {&in, "queue bytes in"}, {&out, "queue bytes out"}})
      if (absl::Status s = u64(v, what); !s.ok()) return s;
    QueueStats* qs = ds.queue(q);
    qs->requests.fetch_add(req);
    qs->bytes_in.fetch_add(in);
    qs->bytes_out.fetch_add(out);
  }
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) {
    uint64_t n = 0;
    if (absl::Status s = u64(&n, "latency bucket"); !s.ok()) return s;
    ds.latency().Add(b, n);
  }
  uint64_t sum = 0, spin = 0, polls = 0, poll_ns = 0, found = 0, delay = 0, thr = 0, sent = 0, held = 0;
  if (absl::Status s = u64(&sum, "latency sum"); !s.ok()) return s;
  ds.latency().AddSum(sum);
  if (absl::Status s = u64(&spin, "spin_us", 1000000); !s.ok()) return s;
  for (auto [v, what] : {std::pair{&polls, "busy polls"}, {&poll_ns, "busy poll time"}, {&found, "busy poll finds"}})
    if (absl::Status s = u64(v, what); !s.ok()) return s;
  if (absl::Status s = u64(&delay, "coalescing delay", 1000000); !s.ok()) return s;
  if (absl::Status s = u64(&thr, "coalescing threshold", uint64_t{1} << 31); !s.ok()) return s;
  if (absl::Status s = u64(&sent, "interrupts sent"); !s.ok()) return s;
  if (absl::Status s = u64(&held, "interrupts held"); !s.ok()) return s;
  ds.spin_us.store(static_cast<uint32_t>(spin));
  ds.busy_polls.fetch_add(polls);
  ds.busy_poll_ns.fetch_add(poll_ns);
  ds.busy_poll_found.fetch_add(found);
  ds.coalesce_delay_us.store(static_cast<uint32_t>(delay));
  ds.coalesce_iops_threshold.store(static_cast<uint32_t>(std::max<uint64_t>(thr, 1)));
  ds.interrupts_sent.fetch_add(sent);
  ds.interrupts_coalesced.fetch_add(held);
  return absl::OkStatus();
}

void PutOptions(HandoverWriter& w, const std::map<std::string, std::string>& kv) {
  w.U64(kv.size());
  for (const auto& [k, v] : kv) {
    w.Str(k);
    w.Str(v);
  }
}

absl::Status GetOptions(HandoverReader& r, std::map<std::string, std::string>* kv) {
  uint64_t n = 0;
  if (absl::Status s = r.U64(&n, kMaxRecordOptions, "option count"); !s.ok()) return s;
  for (uint64_t i = 0; i < n; ++i) {
    std::string k, v;
    if (absl::Status s = r.Str(&k, kMaxRecordText, "option name"); !s.ok()) return s;
    if (absl::Status s = r.Str(&v, kMaxRecordText, "option value"); !s.ok()) return s;
    (*kv)[k] = v;
  }
  return absl::OkStatus();
}

}  // namespace vioport::vios
