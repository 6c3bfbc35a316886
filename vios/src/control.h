// SPDX-License-Identifier: Apache-2.0
#pragma once

// vios's control socket (Server::ListenControl): the listener and one
// session per client. Private to vios/src (server.cc and control.cc).

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/steady_timer.hpp"
#include "server.h"

namespace vioport::vios {

struct Server::Control {
  boost::asio::local::stream_protocol::acceptor acceptor;
  std::string path;
  ControlLimits limits;
  size_t clients = 0;            // sessions open now
  uint64_t refused_clients = 0;  // turned away at the limit
  explicit Control(boost::asio::io_context& io) : acceptor(io) {}
};

struct Server::Session {
  boost::asio::local::stream_protocol::socket sock;
  boost::asio::steady_timer idle;
  std::string chunk;     // what one read fills
  std::string in;        // bytes read, not yet a whole message
  std::string out;       // replies being written
  bool writing = false;
  bool closing = false;  // close once `out` is written
  bool closed = false;
  std::shared_ptr<std::chrono::steady_clock::time_point> idle_mark;  // the last whole message
  Session(boost::asio::local::stream_protocol::socket s, boost::asio::io_context& io)
      : sock(std::move(s)), idle(io) {}
};

}  // namespace vioport::vios
