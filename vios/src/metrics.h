// SPDX-License-Identifier: Apache-2.0
#pragma once

// vios --metrics ADDR:PORT: Prometheus text exposition (format 0.0.4) over
// HTTP. Read-only: GET or HEAD of /metrics, nothing else (404, 405); one
// request per connection; bounded header size, time and connections. The
// metric families are built by the Server (docs/vios.md lists them); this
// file has the HTTP side and the exposition writer.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"

namespace vioport::vios {

// Collects samples and writes them grouped by family, each with one HELP
// and one TYPE line, in the order families were first added.
class Exposition {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // type: "counter", "gauge" or "histogram" (histogram samples are added
  // with their _bucket/_sum/_count names under the family's name).
  void Family(const std::string& name, const std::string& type, const std::string& help);
  void Sample(const std::string& family, const std::string& sample_name, const Labels& labels, double value);
  void Sample(const std::string& family, const Labels& labels, double value) { Sample(family, family, labels, value); }
  std::string Text() const;

  // "a_b.c-d" -> "a_b_c_d": a metric-name-safe form.
  static std::string Sanitize(const std::string& s);

 private:
  struct Fam {
    std::string type, help;
    std::string samples;
  };
  std::vector<std::string> order_;
  std::map<std::string, Fam> families_;
};

class MetricsServer {
 public:
  // Listens on ADDR:PORT ("127.0.0.1:9187", "[::1]:0", "0.0.0.0:9187"; port
  // 0 picks one) and answers GET /metrics with `render()`, on `io`.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(boost::asio::io_context& io, const std::string& address,
                                                             std::function<std::string()> render);
  ~MetricsServer();
  // Where it listens, as "ADDR:PORT" with the port bound.
  std::string where() const;
  uint64_t scrapes() const;

  static constexpr size_t kMaxConnections = 64;

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace vioport::vios
