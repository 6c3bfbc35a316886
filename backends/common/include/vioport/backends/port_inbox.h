// SPDX-License-Identifier: Apache-2.0
// The receiving side of one port of a network inside vios (net's switch,
// vsock's hub): items (frames, packets) that other ports on other threads
// send to a device, which takes them on its own thread. Bounded in items
// and in bytes, and per source: one sender cannot take more than its
// share, so a flooding port does not crowd out the others. An eventfd is
// readable while items wait (the receiving device's loop watches it).
//
// T needs free functions (found by ADL) `size_t InboxBytes(const T&)` and
// `bool InboxMerge(T& queued, T& next)`: true if `next` was folded into
// `queued`, the last item waiting from the same source (vsock joins a
// stream's small packets, so the item limits count data, not writes).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace vioport {

// The eventfd half, shared by every PortInbox.
class InboxSignal {
 public:
  InboxSignal();
  ~InboxSignal();
  InboxSignal(const InboxSignal&) = delete;
  InboxSignal& operator=(const InboxSignal&) = delete;
  bool ok() const { return efd_ >= 0; }
  int event_fd() const { return efd_; }
  void Signal();  // one eventfd write
  void Drain();   // reads the eventfd back to unreadable

 private:
  int efd_ = -1;
};

template <typename T>
class PortInbox {
 public:
  struct Limits {
    uint32_t items = 2048;         // in total
    uint64_t bytes = 8ull << 20;   // in total
    uint32_t per_source = 512;     // items from one sending port
  };
  explicit PortInbox(Limits limits) : limits_(limits) {}
  PortInbox() : PortInbox(Limits{}) {}
  PortInbox(const PortInbox&) = delete;
  PortInbox& operator=(const PortInbox&) = delete;

  bool ok() const { return signal_.ok(); }
  int event_fd() const { return signal_.event_fd(); }

  // Adds items from `source` (a port number); those over a limit are
  // dropped and counted (drops()). Returns how many were taken. Wakes the
  // receiver if it was idle.
  size_t Push(uint32_t source, std::span<T> items) {
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
      for (T& it : items) {
        const size_t queued = src->items.size() - src->head;
        const size_t b = InboxBytes(it);
        if (queued > 0 && bytes_ + b <= limits_.bytes) {
          T& last = src->items.back();
          const size_t before = InboxBytes(last);
          if (InboxMerge(last, it)) {
            bytes_ += InboxBytes(last) - before;
            ++taken;
            continue;
          }
        }
        if (count_ >= limits_.items || bytes_ + b > limits_.bytes || queued >= limits_.per_source) break;
        bytes_ += b;
        ++count_;
        src->items.push_back(std::move(it));
        ++taken;
      }
      // The eventfd is written under the lock, so that it is readable
      // exactly while signalled_ is set: a Take between setting the flag and
      // the write would clear the flag and leave the write behind it,
      // readable with nothing to take.
      if (taken > 0 && !signalled_) {
        signalled_ = true;
        signal_.Signal();
      }
    }
    if (taken < items.size()) drops_.fetch_add(items.size() - taken, std::memory_order_relaxed);
    return taken;
  }

  // Takes up to `max` items, oldest first, round robin across sources,
  // and clears the wake-up: a receiver that stops short of empty (max
  // reached) calls Wake() to come back; one with no room for items just
  // leaves them, and the next Push wakes it again.
  size_t Take(std::vector<T>* out, size_t max) {
    absl::MutexLock l(&mu_);
    AckLocked();
    size_t n = 0;
    size_t idle = 0;  // sources passed in a row with nothing to give
    while (n < max && count_ > 0 && idle < sources_.size()) {
      if (next_ >= sources_.size()) next_ = 0;
      Source& s = sources_[next_];
      if (s.head < s.items.size()) {
        T& it = s.items[s.head++];
        bytes_ -= InboxBytes(it);
        --count_;
        out->push_back(std::move(it));
        ++n;
        idle = 0;
        if (s.head == s.items.size()) {
          s.items.clear();
          s.head = 0;
        }
      } else {
        ++idle;
      }
      ++next_;
    }
    if (count_ == 0) {
      // Forget departed sources so the list stays as long as the live ones.
      sources_.clear();
      next_ = 0;
    }
    return n;
  }
  // Clears the wake-up without taking anything.
  void Ack() {
    absl::MutexLock l(&mu_);
    AckLocked();
  }
  // Drops everything queued (a device reset), counting nothing.
  void Clear() {
    absl::MutexLock l(&mu_);
    sources_.clear();
    next_ = 0;
    count_ = 0;
    bytes_ = 0;
  }
  // Wakes the receiver without an item (it has deferred work of its own).
  void Wake() {
    absl::MutexLock l(&mu_);
    if (signalled_) return;
    signalled_ = true;
    signal_.Signal();
  }

  uint64_t drops() const { return drops_.load(std::memory_order_relaxed); }
  size_t size() const {
    absl::MutexLock l(&mu_);
    return count_;
  }

 private:
  void AckLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!signalled_) return;
    signal_.Drain();
    signalled_ = false;
  }
  struct Source {
    uint32_t id;
    std::vector<T> items;  // FIFO: [head, size)
    size_t head = 0;
  };
  const Limits limits_;
  InboxSignal signal_;
  mutable absl::Mutex mu_;
  std::vector<Source> sources_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // round-robin cursor
  uint32_t count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool signalled_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> drops_{0};
};

}  // namespace vioport
