// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/handover.h"

#include <sys/socket.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport {

void HandoverWriter::U64(uint64_t v) { bytes_.append(reinterpret_cast<const char*>(&v), sizeof v); }

void HandoverWriter::Str(absl::string_view s) {
  U64(s.size());
  bytes_.append(s.data(), s.size());
}

void HandoverWriter::U64s(std::span<const uint64_t> v) {
  U64(v.size());
  for (uint64_t x : v) U64(x);
}

void HandoverWriter::Fd(int fd) {
  U64(fds_.size());  // checked by the reader: descriptors come in the order named
  fds_.push_back(fd);
}

void HandoverWriter::Snapshot(const ControllerSnapshot& s) {
  U64(s.status);
  U64(s.driver_features);
  U64(s.generation);
  U64(s.queues.size());
  for (size_t i = 0; i < s.queues.size(); ++i) {
    const QueueSetup& q = s.queues[i];
    U64s(std::vector<uint64_t>{q.size, q.desc, q.driver, q.device, q.ready ? 1u : 0u, s.bases[i]});
  }
  Str(s.last_error);
}

absl::Status HandoverReader::Take(void* out, size_t n, absl::string_view what) {
  if (bytes_.size() - pos_ < n) return absl::InvalidArgumentError(absl::StrCat("handover record ends inside ", what));
  if (n == 0) return absl::OkStatus();  // `out` may be an empty container's null data()
  std::memcpy(out, bytes_.data() + pos_, n);
  pos_ += n;
  return absl::OkStatus();
}

absl::Status HandoverReader::U64(uint64_t* v, absl::string_view what) { return Take(v, sizeof *v, what); }

absl::Status HandoverReader::U64(uint64_t* v, uint64_t max, absl::string_view what) {
  if (absl::Status s = U64(v, what); !s.ok()) return s;
  if (*v > max) return absl::InvalidArgumentError(absl::StrCat("handover record: ", what, " ", *v, " > ", max));
  return absl::OkStatus();
}

absl::Status HandoverReader::Str(std::string* s, size_t max, absl::string_view what) {
  uint64_t n = 0;
  if (absl::Status st = U64(&n, max, what); !st.ok()) return st;
  s->resize(n);
  return Take(s->data(), n, what);
}

absl::Status HandoverReader::U64s(std::vector<uint64_t>* v, size_t max, absl::string_view what) {
  uint64_t n = 0;
  if (absl::Status st = U64(&n, max, what); !st.ok()) return st;
  if ((bytes_.size() - pos_) / sizeof(uint64_t) < n)
    return absl::InvalidArgumentError(absl::StrCat("handover record ends inside ", what));
  v->resize(n);
  return Take(v->data(), n * sizeof(uint64_t), what);
}

absl::Status HandoverReader::Fd(UniqueFd* fd, absl::string_view what) {
  uint64_t index = 0;
  if (absl::Status s = U64(&index, what); !s.ok()) return s;
  if (index != next_fd_ || next_fd_ >= fds_.size())
    return absl::InvalidArgumentError(absl::StrCat("handover record: descriptor for ", what, " is missing"));
  *fd = std::move(fds_[next_fd_++]);
  return absl::OkStatus();
}

absl::Status HandoverReader::Snapshot(ControllerSnapshot* s, size_t max_queues) {
  uint64_t status = 0, n = 0;
  if (absl::Status st = U64(&status, 0xff, "device status"); !st.ok()) return st;
  s->status = static_cast<uint8_t>(status);
  if (absl::Status st = U64(&s->driver_features, "driver features"); !st.ok()) return st;
  uint64_t gen = 0;
  if (absl::Status st = U64(&gen, UINT32_MAX, "config generation"); !st.ok()) return st;
  s->generation = static_cast<uint32_t>(gen);
  if (absl::Status st = U64(&n, max_queues, "queue count"); !st.ok()) return st;
  s->queues.assign(n, QueueSetup{});
  s->bases.assign(n, 0);
  for (uint64_t i = 0; i < n; ++i) {
    std::vector<uint64_t> q;
    if (absl::Status st = U64s(&q, 6, "queue"); !st.ok()) return st;
    if (q.size() != 6 || q[0] > UINT32_MAX || q[4] > 1 || q[5] > UINT32_MAX)
      return absl::InvalidArgumentError(absl::StrCat("handover record: queue ", i, " is malformed"));
    s->queues[i] = QueueSetup{static_cast<uint32_t>(q[0]), q[1], q[2], q[3], q[4] == 1};
    s->bases[i] = static_cast<uint32_t>(q[5]);
  }
  return Str(&s->last_error, 4096, "last error");
}

absl::Status HandoverReader::Done() const {
  if (pos_ != bytes_.size() || next_fd_ != fds_.size())
    return absl::InvalidArgumentError(absl::StrCat("handover record has ", bytes_.size() - pos_, " bytes and ",
                                                   fds_.size() - next_fd_, " descriptors left over"));
  return absl::OkStatus();
}

absl::Status SendHandoverRecord(int sock, const HandoverWriter& w) {
  if (w.bytes().size() > kMaxHandoverRecord || w.fds().size() > kMaxHandoverFds)
    return absl::InvalidArgumentError(absl::StrCat("handover record of ", w.bytes().size(), " bytes and ",
                                                   w.fds().size(), " descriptors is over the limit (",
                                                   kMaxHandoverRecord, ", ", kMaxHandoverFds, ")"));
  const auto* b = reinterpret_cast<const uint8_t*>(w.bytes().data());
  // An empty record still needs a byte to carry its descriptors.
  static const uint8_t kEmpty = 0;
  std::span<const uint8_t> data = w.bytes().empty() ? std::span<const uint8_t>(&kEmpty, 1)
                                                    : std::span<const uint8_t>(b, w.bytes().size());
  return SendWithFds(sock, data, w.fds(), MSG_NOSIGNAL);
}

absl::StatusOr<HandoverReader> RecvHandoverRecord(int sock, absl::Duration timeout) {
  if (!WaitReadable(sock, absl::Now() + timeout))
    return absl::DeadlineExceededError(absl::StrCat("no handover record within ", absl::FormatDuration(timeout)));
  std::string buf(kMaxHandoverRecord + 1, '\0');
  std::vector<int> raw;
  auto n = RecvWithFds(sock, {reinterpret_cast<uint8_t*>(buf.data()), buf.size()}, &raw, kMaxHandoverFds,
                       MSG_DONTWAIT);
  std::vector<UniqueFd> fds;
  for (int fd : raw) fds.emplace_back(fd);
  if (!n.ok()) return n.status();
  if (*n > kMaxHandoverRecord) return absl::InvalidArgumentError("handover record over the size limit");
  buf.resize(*n == 1 && buf[0] == 0 ? 0 : *n);
  return HandoverReader(std::move(buf), std::move(fds));
}

}  // namespace vioport
