// SPDX-License-Identifier: Apache-2.0
#pragma once

// A blocking client of vios's control API (JSON-RPC 2.0 over its Unix
// socket), and the text viosctl prints from the replies. Used by viosctl
// and by tests; vios itself does not need it.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace vioport::vios {

// Sends one request {"jsonrpc":"2.0","id":1,"method":...,"params":...} and
// returns the whole reply object (a "result" or an "error" member). Fails
// (Unavailable) if vios cannot be reached or does not answer a whole line
// within `timeout_s` seconds.
absl::StatusOr<nlohmann::json> ControlCall(const std::string& socket, const std::string& method,
                                           const nlohmann::json& params, double timeout_s = 30);
// The same for a raw line (a batch, or anything); returns the reply line.
absl::StatusOr<std::string> ControlSend(const std::string& socket, const std::string& line, double timeout_s = 30);

// `viosctl list`: a table of netdev_list and device_list results.
std::string RenderList(const nlohmann::json& netdevs, const nlohmann::json& devices);
// `viosctl stats`: "ID.NAME VALUE" lines of a stats result.
std::string RenderStats(const nlohmann::json& stats);
// "ID.NAME VALUE" lines as `stats ID` prints them, straight from a reply
// ("error: MESSAGE" for an error reply): for tests that poll counters.
std::string StatsText(const std::string& socket, const std::string& id, double timeout_s = 5);

}  // namespace vioport::vios
