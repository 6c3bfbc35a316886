// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/net_port.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace vioport::net {

Inbox::Inbox(Limits limits) : limits_(limits) { efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

Inbox::~Inbox() {
  if (efd_ >= 0) ::close(efd_);
}

size_t Inbox::Push(uint32_t source, std::span<Frame> frames) {
  size_t taken = 0;
  {
    absl::MutexLock l(&mu_);
    Source* src = nullptr;
    for (Source& s : sources_)
      if (s.id == source) src = &s;
    if (!src) {
      sources_.push_back(Source{source, {}, 0});
      src = &sources_.back();
    }
    for (Frame& f : frames) {
      const size_t queued = src->frames.size() - src->head;
      if (frames_ >= limits_.frames || bytes_ + f.data.size() > limits_.bytes || queued >= limits_.per_source) break;
      bytes_ += f.data.size();
      ++frames_;
      src->frames.push_back(std::move(f));
      ++taken;
    }
    // The eventfd is written under the lock, so that it is readable exactly
    // while signalled_ is set: a Take between setting the flag and the write
    // would clear the flag and leave the write behind it, readable with
    // nothing to take.
    if (taken > 0 && !signalled_) {
      signalled_ = true;
      Signal();
    }
  }
  if (taken < frames.size()) drops_.fetch_add(frames.size() - taken, std::memory_order_relaxed);
  return taken;
}

void Inbox::AckLocked() {
  if (!signalled_) return;
  uint64_t v;
  while (::read(efd_, &v, sizeof v) < 0 && errno == EINTR) {
  }
  signalled_ = false;
}

void Inbox::Ack() {
  absl::MutexLock l(&mu_);
  AckLocked();
}

size_t Inbox::Take(std::vector<Frame>* out, size_t max) {
  absl::MutexLock l(&mu_);
  AckLocked();
  size_t n = 0;
  size_t idle = 0;  // sources passed in a row with nothing to give
  while (n < max && frames_ > 0 && idle < sources_.size()) {
    if (next_ >= sources_.size()) next_ = 0;
    Source& s = sources_[next_];
    if (s.head < s.frames.size()) {
      Frame& f = s.frames[s.head++];
      bytes_ -= f.data.size();
      --frames_;
      out->push_back(std::move(f));
      ++n;
      idle = 0;
      if (s.head == s.frames.size()) {
        s.frames.clear();
        s.head = 0;
      }
    } else {
      ++idle;
    }
    ++next_;
  }
  if (frames_ == 0) {
    // Forget departed sources so the list stays as long as the live ones.
    sources_.clear();
    next_ = 0;
  }
  return n;
}

void Inbox::Clear() {
  absl::MutexLock l(&mu_);
  sources_.clear();
  next_ = 0;
  frames_ = 0;
  bytes_ = 0;
}

void Inbox::Wake() {
  absl::MutexLock l(&mu_);
  if (signalled_) return;
  signalled_ = true;
  Signal();
}

void Inbox::Signal() {
  const uint64_t one = 1;
  while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

size_t Inbox::size() const {
  absl::MutexLock l(&mu_);
  return frames_;
}

}  // namespace vioport::net
