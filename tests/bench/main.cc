// SPDX-License-Identifier: Apache-2.0
// vioport_bench: the machine's limits first, then the rings; after the run, a
// summary of every ring result as ratios to the limits measured in this run.
#include <string>

#include "bench_support.h"

int main(int argc, char** argv) {
  // JSON/CSV on stdout must stay parseable: the summary then goes to stderr.
  bool machine_readable = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--benchmark_format=json" || a == "--benchmark_format=csv") machine_readable = true;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  vioport::bench::RegisterMachineLimitBenchmarks();
  vioport::bench::RegisterSingleThreadBenchmarks();
  vioport::bench::RegisterTwoThreadBenchmarks();
  benchmark::AddCustomContext("pinned_threads", vioport::bench::PinningEnabled() ? "yes" : "no");
  benchmark::AddCustomContext("pause_in_polls", vioport::bench::PauseInPolls() ? "yes" : "no");
  vioport::bench::StartCpuAccounting();
  benchmark::RunSpecifiedBenchmarks();
  vioport::bench::PrintSummary(machine_readable ? stderr : stdout);
  benchmark::Shutdown();
  return 0;
}
