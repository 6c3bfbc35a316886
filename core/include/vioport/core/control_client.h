// SPDX-License-Identifier: Apache-2.0
// The client half of vioport's control sockets (vios's, and the channel
// emulators'): one command line per connection over a Unix stream socket,
// answered with text whose last line is "ok" or "error: ...". Used by the
// small ...ctl programs so they differ only in their usage text.
#pragma once

namespace vioport {

// Parses `--control PATH` (or `--control=PATH`), `--help` and the command
// words from argv, sends the command, prints the answer. Returns the exit
// status: 0 if the server answered ok, 1 if it answered an error, 2 if it
// could not be reached or the arguments are incomplete. `program` and
// `server` name the two ends in messages; `usage` is printed for --help.
int RunControlClient(int argc, char** argv, const char* program, const char* server, const char* usage);

}  // namespace vioport
