// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/xen_backend_host.h"

#include "absl/strings/str_cat.h"
#include "boost/asio/posix/stream_descriptor.hpp"

namespace vioport::xen {

namespace asio = boost::asio;

struct XenBackendHost::Watcher {
  asio::posix::stream_descriptor events, watches;
  explicit Watcher(asio::io_context& io) : events(io), watches(io) {}
  ~Watcher() {
    (void)events.release();  // the channel and libxenstore own the fds
    (void)watches.release();
  }
};

absl::StatusOr<std::shared_ptr<XenBackendHost>> XenBackendHost::Create(asio::io_context& io,
                                                                      std::unique_ptr<XenChannel> ch, bool frozen) {
  std::shared_ptr<XenBackendHost> h(new XenBackendHost(io, std::move(ch)));
  h->frozen_ = frozen;
  auto xs = XsClient::Open(h->ch_->xenstore_path());
  if (!xs.ok()) return xs.status();
  h->xs_ = std::move(*xs);
  h->w_ = std::make_shared<Watcher>(io);
  boost::system::error_code ec;
  h->w_->events.assign(h->ch_->event_fd(), ec);
  if (!ec) h->w_->watches.assign(h->xs_->fd(), ec);
  if (ec) return absl::InternalError(absl::StrCat("xen: watching the channel: ", ec.message()));
  h->WaitEvents();
  h->WaitWatches();
  return h;
}

XenBackendHost::~XenBackendHost() {
  boost::system::error_code ec;
  w_->events.cancel(ec);
  w_->watches.cancel(ec);
}

void XenBackendHost::OnPort(EvtchnPort port, std::function<void()> fn) { ports_[port] = std::move(fn); }
void XenBackendHost::RemovePort(EvtchnPort port) { ports_.erase(port); }

absl::Status XenBackendHost::OnWatch(const std::string& path, const std::string& token, std::function<void()> fn) {
  watches_[token] = std::move(fn);
  absl::Status s = xs_->Watch(path, token);
  if (!s.ok()) watches_.erase(token);
  return s;
}

void XenBackendHost::RemoveWatch(const std::string& path, const std::string& token) {
  (void)xs_->Unwatch(path, token);
  watches_.erase(token);
}

void XenBackendHost::ProcessEvents() {
  pending_.clear();
  ch_->PendingPorts(pending_);
  // Each port stays masked while its handler runs (and spins): sends
  // meanwhile only mark it pending, with no wake-up. Unmasking a pending
  // port delivers it again, so nothing is lost; the hypercall is paid once
  // per wake-up, after the work.
  for (EvtchnPort p : pending_) {
    auto it = ports_.find(p);
    if (it != ports_.end()) {
      auto fn = it->second;  // the handler may remove itself
      fn();
    }
  }
  for (EvtchnPort p : pending_) (void)ch_->Unmask(p);
}

void XenBackendHost::ProcessWatches() {
  while (auto w = xs_->ReadWatch()) {
    auto it = watches_.find(w->second);
    if (it != watches_.end()) {
      auto fn = it->second;
      fn();
    }
  }
}

void XenBackendHost::WaitEvents() {
  if (frozen_) return;  // Thaw waits again
  w_->events.async_wait(asio::posix::stream_descriptor::wait_read,
                        [self = weak_from_this()](const boost::system::error_code& ec) {
                          auto h = self.lock();
                          if (ec || !h || h->frozen_) return;
                          h->wakeups_++;
                          h->ProcessEvents();
                          h->WaitEvents();
                        });
}

void XenBackendHost::WaitWatches() {
  if (frozen_) return;
  w_->watches.async_wait(asio::posix::stream_descriptor::wait_read,
                         [self = weak_from_this()](const boost::system::error_code& ec) {
                           auto h = self.lock();
                           if (ec || !h || h->frozen_) return;
                           h->ProcessWatches();
                           h->WaitWatches();
                         });
}

absl::Status XenBackendHost::Freeze(HandoverWriter* out) {
  if (!frozen_) {
    frozen_ = true;
    boost::system::error_code ec;
    w_->events.cancel(ec);
    w_->watches.cancel(ec);
  }
  if (exported_) {
    out->U64(0);
    return absl::OkStatus();
  }
  exported_ = true;
  out->U64(1);
  return ch_->Export(out);
}

void XenBackendHost::Thaw() {
  if (!frozen_) return;
  frozen_ = false;
  exported_ = false;
  // What came while frozen: the edge that announced it went to nobody.
  ProcessEvents();
  ProcessWatches();
  WaitEvents();
  WaitWatches();
}

}  // namespace vioport::xen
