# SPDX-License-Identifier: Apache-2.0
# Sourced by the transport bench scripts (bench-shm, bench-vhost-user,
# bench-crq, bench-xen): reading vioguest's and viosctl's output, and
# waiting for a daemon's socket.

# field KEY < output: the value of KEY= on the last "result ..." line.
field() { sed -n 's/^result .*[ ]'"$1"'=\([^ ]*\).*/\1/p' | tail -1; }
# lat [PROGRAM] < output: the p50 latency (us) PROGRAM (default vioguest) printed.
lat() { sed -n 's/^'"${1:-vioguest}"' .*p50 *\([0-9.]*\).*/\1/p' | tail -1; }
# stat ID NAME: vios's counter ID.NAME ($VIOSCTL, control socket $work/vios.ctl).
stat() { "$VIOSCTL" --control "$work/vios.ctl" stats "$1" | awk -v k="$1.$2" '$1 == k {print $2}'; }
# wait_socket PATH: up to 5 s for PATH to become a socket; false if it did not.
wait_socket() {
  for _ in $(seq 200); do [[ -S "$1" ]] && return 0; sleep 0.025; done
  return 1
}
